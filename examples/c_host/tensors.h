/* A minimal reader of safetensors files for the example host: the whole file in memory, tensors
 * found by name in the JSON header (F32 and I64 only). Not a general JSON parser: enough for the
 * files safetensors writes (each tensor an object with "dtype", "shape" and "data_offsets"). */
#ifndef TENSORS_H
#define TENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef struct TensorFile {
    char *path;
    unsigned char *bytes;
    size_t size;
    const char *header; /* the JSON header, NUL-terminated copy */
    size_t data_start;  /* offset of the data section */
} TensorFile;

typedef struct Tensor {
    const void *data;  /* into the file's bytes */
    size_t len;        /* elements */
    size_t shape[8];
    size_t rank;
} Tensor;

/* Reads `path`; returns 0 on success, else prints why to stderr. */
int tensor_file_open(TensorFile *file, const char *path);
void tensor_file_close(TensorFile *file);
/* Finds tensor `name` of `dtype` ("F32" or "I64"); returns 0 on success, else prints why. */
int tensor_find(const TensorFile *file, const char *name, const char *dtype, Tensor *out);

#endif
