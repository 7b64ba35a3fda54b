/*
 * test_model.c - unit tests for libcloud/model.c: state names round-trip, Nova's status
 * map, power state codes and host free capacity.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "model.h"

static void test_names_round_trip(void **state)
{
    (void)state;
    for (int i = 0; i < CL_VM_STATE_MAX; i++) {
        cl_vm_state v = CL_VM_STATE_MAX;
        assert_int_equal(cl_vm_state_parse(cl_vm_state_name((cl_vm_state)i), &v), 0);
        assert_int_equal(v, i);
    }
    for (int i = 0; i < CL_TASK_STATE_MAX; i++) {
        cl_task_state t = CL_TASK_STATE_MAX;
        assert_int_equal(cl_task_state_parse(cl_task_state_name((cl_task_state)i), &t), 0);
        assert_int_equal(t, i);
    }
    for (int i = 0; i < CL_POWER_STATE_MAX; i++) {
        cl_power_state p = CL_POWER_STATE_MAX;
        assert_int_equal(cl_power_state_parse(cl_power_state_name((cl_power_state)i), &p),
                         0);
        assert_int_equal(p, i);
    }
}

static void test_names_are_novas(void **state)
{
    (void)state;
    assert_string_equal(cl_vm_state_name(CL_VM_BUILDING), "building");
    assert_string_equal(cl_vm_state_name(CL_VM_STOPPED), "stopped");
    assert_string_equal(cl_vm_state_name(CL_VM_RESIZED), "resized");
    assert_string_equal(cl_task_state_name(CL_TASK_NONE), "none");
    assert_string_equal(cl_task_state_name(CL_TASK_SPAWNING), "spawning");
    assert_string_equal(cl_task_state_name(CL_TASK_POWERING_OFF), "powering-off");
    assert_string_equal(cl_task_state_name(CL_TASK_RESIZE_PREP), "resize_prep");
    /* Nova's task_states.py spellings for the tasks appended later. */
    assert_string_equal(cl_task_state_name(CL_TASK_PAUSING), "pausing");
    assert_string_equal(cl_task_state_name(CL_TASK_UNPAUSING), "unpausing");
    assert_string_equal(cl_task_state_name(CL_TASK_SUSPENDING), "suspending");
    assert_string_equal(cl_task_state_name(CL_TASK_RESUMING), "resuming");
    assert_string_equal(cl_task_state_name(CL_TASK_REBOOTING_HARD), "rebooting_hard");
    assert_string_equal(cl_task_state_name(CL_TASK_RESIZE_REVERTING), "resize_reverting");
    assert_string_equal(cl_task_state_name(CL_TASK_RESIZE_CONFIRMING), "resize_confirming");
    cl_task_state pt = CL_TASK_NONE;
    assert_int_equal(cl_task_state_parse("rebooting_hard", &pt), 0);
    assert_int_equal(pt, CL_TASK_REBOOTING_HARD);
    assert_string_equal(cl_power_state_name(CL_POWER_RUNNING), "running");
    assert_string_equal(cl_power_state_name(CL_POWER_SHUTDOWN), "shutdown");
    assert_string_equal(cl_vm_state_name(CL_VM_STATE_MAX), "unknown");
}

static void test_parse_rejects(void **state)
{
    cl_vm_state v = CL_VM_ERROR;
    cl_task_state t = CL_TASK_DELETING;
    cl_power_state p = CL_POWER_CRASHED;

    (void)state;
    assert_int_equal(cl_vm_state_parse("ACTIVE", &v), -EINVAL);
    assert_int_equal(cl_vm_state_parse("", &v), -EINVAL);
    assert_int_equal(cl_vm_state_parse(NULL, &v), -EINVAL);
    assert_int_equal(cl_task_state_parse("powering_off", &t), -EINVAL);
    assert_int_equal(cl_power_state_parse("on", &p), -EINVAL);
    assert_int_equal(v, CL_VM_ERROR);
    assert_int_equal(t, CL_TASK_DELETING);
    assert_int_equal(p, CL_POWER_CRASHED);
}

static void test_power_codes(void **state)
{
    (void)state;
    assert_int_equal(cl_power_state_code(CL_POWER_NOSTATE), 0);
    assert_int_equal(cl_power_state_code(CL_POWER_RUNNING), 1);
    assert_int_equal(cl_power_state_code(CL_POWER_PAUSED), 3);
    assert_int_equal(cl_power_state_code(CL_POWER_SHUTDOWN), 4);
    assert_int_equal(cl_power_state_code(CL_POWER_CRASHED), 6);
    assert_int_equal(cl_power_state_code(CL_POWER_SUSPENDED), 7);
}

static void test_status_map(void **state)
{
    (void)state;
    assert_string_equal(cl_instance_status(CL_VM_BUILDING, CL_TASK_SCHEDULING), "BUILD");
    assert_string_equal(cl_instance_status(CL_VM_BUILDING, CL_TASK_NONE), "BUILD");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_NONE), "ACTIVE");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_POWERING_OFF), "ACTIVE");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_DELETING), "ACTIVE");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_REBOOTING), "REBOOT");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_MIGRATING), "MIGRATING");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_RESIZE_PREP), "RESIZE");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_RESIZE_MIGRATING), "RESIZE");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_RESIZE_FINISH), "RESIZE");
    assert_string_equal(cl_instance_status(CL_VM_STOPPED, CL_TASK_NONE), "SHUTOFF");
    assert_string_equal(cl_instance_status(CL_VM_STOPPED, CL_TASK_POWERING_ON), "SHUTOFF");
    assert_string_equal(cl_instance_status(CL_VM_STOPPED, CL_TASK_RESIZE_PREP), "RESIZE");
    assert_string_equal(cl_instance_status(CL_VM_PAUSED, CL_TASK_NONE), "PAUSED");
    assert_string_equal(cl_instance_status(CL_VM_SUSPENDED, CL_TASK_NONE), "SUSPENDED");
    assert_string_equal(cl_instance_status(CL_VM_RESIZED, CL_TASK_NONE), "VERIFY_RESIZE");
    assert_string_equal(cl_instance_status(CL_VM_RESIZED, CL_TASK_RESIZE_REVERTING),
                        "REVERT_RESIZE");
    assert_string_equal(cl_instance_status(CL_VM_RESIZED, CL_TASK_RESIZE_CONFIRMING),
                        "VERIFY_RESIZE");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_REBOOTING_HARD), "HARD_REBOOT");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_PAUSING), "ACTIVE");
    assert_string_equal(cl_instance_status(CL_VM_PAUSED, CL_TASK_UNPAUSING), "PAUSED");
    assert_string_equal(cl_instance_status(CL_VM_ACTIVE, CL_TASK_SUSPENDING), "ACTIVE");
    assert_string_equal(cl_instance_status(CL_VM_SUSPENDED, CL_TASK_RESUMING), "SUSPENDED");
    assert_string_equal(cl_instance_status(CL_VM_ERROR, CL_TASK_DELETING), "ERROR");
    assert_string_equal(cl_instance_status(CL_VM_DELETED, CL_TASK_NONE), "DELETED");
    assert_string_equal(cl_instance_status(CL_VM_STATE_MAX, CL_TASK_NONE), "UNKNOWN");
}

static void test_free_capacity(void **state)
{
    cl_host h;

    (void)state;
    memset(&h, 0, sizeof(h));
    h.vcpus = 8;
    h.cpu_ratio = 4.0;
    h.reserved_vcpus = 2;
    h.used_vcpus = 10;
    h.ram_mb = 16384;
    h.ram_ratio = 1.0;
    h.reserved_ram_mb = 512;
    h.used_ram_mb = 2048;
    h.disk_gb = 100;
    h.disk_ratio = 0.29; /* 28.999999999999996 in binary: must still give 29 */
    h.reserved_disk_gb = 0;
    h.used_disk_gb = 0;
    assert_int_equal(cl_host_free_vcpus(&h), 8 * 4 - 2 - 10);
    assert_int_equal(cl_host_free_ram_mb(&h), 16384 - 512 - 2048);
    assert_int_equal(cl_host_free_disk_gb(&h), 29);

    /* Floor of a fractional capacity. */
    h.vcpus = 3;
    h.cpu_ratio = 1.5; /* 4.5 -> 4 */
    h.reserved_vcpus = 0;
    h.used_vcpus = 0;
    assert_int_equal(cl_host_free_vcpus(&h), 4);

    /* Overcommitted beyond the ratio: the real (negative) value. */
    h.ram_ratio = 0.5;
    h.used_ram_mb = 10000;
    assert_int_equal(cl_host_free_ram_mb(&h), 8192 - 512 - 10000);
    assert_true(cl_host_free_ram_mb(&h) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_round_trip),
        cmocka_unit_test(test_names_are_novas),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_power_codes),
        cmocka_unit_test(test_status_map),
        cmocka_unit_test(test_free_capacity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
