#define _GNU_SOURCE
#include "cuda_driver.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int cuda_driver_load(CudaDriver *driver, char *why, size_t why_len) {
    memset(driver, 0, sizeof *driver);
    driver->library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!driver->library) driver->library = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!driver->library) {
        snprintf(why, why_len, "no CUDA driver (libcuda.so.1 could not be loaded)");
        return 1;
    }
    struct {
        void **slot;
        const char *name;
    } symbols[] = {
        {(void **)&driver->cuInit, "cuInit"},
        {(void **)&driver->cuDeviceGetCount, "cuDeviceGetCount"},
        {(void **)&driver->cuDeviceGet, "cuDeviceGet"},
        {(void **)&driver->cuDeviceGetName, "cuDeviceGetName"},
        {(void **)&driver->cuCtxCreate, "cuCtxCreate_v2"},
        {(void **)&driver->cuCtxDestroy, "cuCtxDestroy_v2"},
        {(void **)&driver->cuCtxSetCurrent, "cuCtxSetCurrent"},
        {(void **)&driver->cuStreamCreate, "cuStreamCreate"},
        {(void **)&driver->cuStreamSynchronize, "cuStreamSynchronize"},
        {(void **)&driver->cuStreamDestroy, "cuStreamDestroy_v2"},
        {(void **)&driver->cuMemAlloc, "cuMemAlloc_v2"},
        {(void **)&driver->cuMemFree, "cuMemFree_v2"},
        {(void **)&driver->cuMemsetD8, "cuMemsetD8_v2"},
        {(void **)&driver->cuMemcpyHtoD, "cuMemcpyHtoD_v2"},
        {(void **)&driver->cuMemcpyDtoH, "cuMemcpyDtoH_v2"},
        {(void **)&driver->cuGetErrorString, "cuGetErrorString"},
    };
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        *symbols[i].slot = dlsym(driver->library, symbols[i].name);
        if (!*symbols[i].slot) {
            snprintf(why, why_len, "the CUDA driver lacks %s", symbols[i].name);
            return 1;
        }
    }
    return 0;
}

const char *cuda_error(const CudaDriver *driver, CUresult result) {
    const char *text = NULL;
    if (driver->cuGetErrorString && driver->cuGetErrorString(result, &text) == 0 && text) return text;
    return "unknown CUDA error";
}
