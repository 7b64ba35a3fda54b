/*
 * store_placement.c - controller-store tables and functions for the placement concern
 * (see store_schema.h). The schema step is empty until that work lands.
 */
#include "store_schema.h"

const char cl_store_schema_placement[] = "SELECT 1;";
