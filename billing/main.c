/*
 * main.c - nube-billing: the thin shell around libbill (billing.c, meter.c, rating.c,
 * api.c).
 *
 * Everything daemons share (options, config, logging, signals) is cl_daemon_*; all that
 * billing does is bill_start()/bill_stop(), which the unit tests drive too.
 */
#include "billing.h"
#include "daemon.h"
#include "errors.h"
#include "log.h"

static const cl_daemon_info bill_daemon_info = {
    .name = "nube-billing",
    .summary = "nube metering, rating and invoices (pay-per-use billing)",
    .description =
        "nube-billing receives usage samples from every nube-agent over the ZeroMQ bus\n"
        "([billing] bus_listen): cumulative counters (CPU time, network and disk bytes),\n"
        "gauges and life-cycle events of each instance. Samples are de-duplicated by id\n"
        "and counters turned into deltas that survive reboots, migrations and late or\n"
        "repeated delivery. Every [billing] rate_interval_s the changed hours are rated\n"
        "per project, instance and meter with the price plan ([prices] or PUT\n"
        "/v1/prices), in integer micro-units of the currency, charging running time per\n"
        "second with a minimum of [billing] min_charge_s per running interval.\n"
        "\n"
        "The HTTP API ([billing] listen, port) serves usage, costs, monthly invoices,\n"
        "CSV/JSON exports, price plans and re-rating, plus /healthz and /metrics.",
    .default_config = "/etc/nube/nube-billing.conf",
    .keys = bill_cfg_keys,
    .nkeys = 0, /* set in main: bill_cfg_nkeys is not a constant expression here */
};

int main(int argc, char **argv)
{
    cl_daemon_info info = bill_daemon_info;
    bill_cfg cfg;
    bill *b = NULL;
    cl_error err = {0};
    int rc = 0;

    info.nkeys = bill_cfg_nkeys;
    if (cl_daemon_init(&info, argc, argv, &cfg, &rc) <= 0)
        return rc;
    if (bill_start(&cfg, &b, &err) < 0) {
        cl_err("bill", "cannot start: %s", err.message);
        cl_daemon_done(&info, &cfg);
        return 1;
    }
    cl_daemon_wait();
    bill_stop(b);
    cl_daemon_done(&info, &cfg);
    return 0;
}
