/* The few CUDA driver API functions the example host uses, loaded from libcuda at run time
 * (dlopen), so that the example builds on machines without the CUDA toolkit and runs its GPU
 * path wherever a driver is installed. A host built against cuda.h calls the same functions. */
#ifndef CUDA_DRIVER_H
#define CUDA_DRIVER_H

#include <stddef.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUstream;
typedef unsigned long long CUdeviceptr;

typedef struct CudaDriver {
    void *library;
    CUresult (*cuInit)(unsigned int);
    CUresult (*cuDeviceGetCount)(int *);
    CUresult (*cuDeviceGet)(CUdevice *, int);
    CUresult (*cuDeviceGetName)(char *, int, CUdevice);
    CUresult (*cuCtxCreate)(CUcontext *, unsigned int, CUdevice);
    CUresult (*cuCtxDestroy)(CUcontext);
    CUresult (*cuCtxSetCurrent)(CUcontext);
    CUresult (*cuStreamCreate)(CUstream *, unsigned int);
    CUresult (*cuStreamSynchronize)(CUstream);
    CUresult (*cuStreamDestroy)(CUstream);
    CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
    CUresult (*cuMemFree)(CUdeviceptr);
    CUresult (*cuMemsetD8)(CUdeviceptr, unsigned char, size_t);
    CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
    CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t);
    CUresult (*cuGetErrorString)(CUresult, const char **);
} CudaDriver;

/* Loads libcuda and its functions; returns 0, or 1 with the reason in `why`. */
int cuda_driver_load(CudaDriver *driver, char *why, size_t why_len);
/* The driver's text for an error code. */
const char *cuda_error(const CudaDriver *driver, CUresult result);

#endif
