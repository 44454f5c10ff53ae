#define _POSIX_C_SOURCE 200809L
#include "tensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tensor_file_open(TensorFile *file, const char *path) {
    memset(file, 0, sizeof *file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    file->bytes = malloc((size_t)size);
    if (size < 8 || !file->bytes || fread(file->bytes, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "%s: cannot read\n", path);
        fclose(f);
        free(file->bytes);
        return 1;
    }
    fclose(f);
    file->size = (size_t)size;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | file->bytes[i];
    if (header_len > file->size - 8) {
        fprintf(stderr, "%s: not a safetensors file\n", path);
        free(file->bytes);
        return 1;
    }
    char *header = malloc(header_len + 1);
    memcpy(header, file->bytes + 8, header_len);
    header[header_len] = '\0';
    file->header = header;
    file->data_start = 8 + header_len;
    file->path = strdup(path);
    return 0;
}

void tensor_file_close(TensorFile *file) {
    free(file->bytes);
    free((char *)file->header);
    free(file->path);
    memset(file, 0, sizeof *file);
}

/* The numbers of a JSON array starting at `p` ('['), up to `max`; returns how many. */
static size_t numbers(const char *p, size_t *out, size_t max) {
    size_t n = 0;
    p++;
    while (*p && *p != ']') {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        if (n < max) out[n] = (size_t)v;
        n++;
        p = end;
    }
    return n;
}

int tensor_find(const TensorFile *file, const char *name, const char *dtype, Tensor *out) {
    char key[256];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *at = strstr(file->header, key);
    if (!at) {
        fprintf(stderr, "%s: no tensor `%s`\n", file->path, name);
        return 1;
    }
    const char *end = strchr(at, '}');
    const char *type = strstr(at, "\"dtype\":\"");
    const char *shape = strstr(at, "\"shape\":[");
    const char *offsets = strstr(at, "\"data_offsets\":[");
    if (!end || !type || !shape || !offsets || type > end || shape > end || offsets > end) {
        fprintf(stderr, "%s: tensor `%s` is not described as expected\n", file->path, name);
        return 1;
    }
    type += strlen("\"dtype\":\"");
    if (strncmp(type, dtype, strlen(dtype)) != 0 || type[strlen(dtype)] != '"') {
        fprintf(stderr, "%s: tensor `%s` is not %s\n", file->path, name, dtype);
        return 1;
    }
    size_t range[2] = {0, 0};
    out->rank = numbers(shape + strlen("\"shape\":"), out->shape, 8);
    if (numbers(offsets + strlen("\"data_offsets\":"), range, 2) != 2 || range[1] < range[0] ||
        file->data_start + range[1] > file->size) {
        fprintf(stderr, "%s: tensor `%s` lies outside the file\n", file->path, name);
        return 1;
    }
    size_t element = strcmp(dtype, "F32") == 0 ? 4 : 8;
    out->len = (range[1] - range[0]) / element;
    out->data = file->bytes + file->data_start + range[0];
    return 0;
}
