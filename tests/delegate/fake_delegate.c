/*
 * A tiny external TFLite delegate for the tests, built with the system C compiler.
 *
 * It speaks the same ABI as libedgetpu.so.1 and every other external delegate: the two entry
 * points that both runtimes' load_delegate() call through ctypes
 * (tensorflow/lite/delegates/external/external_delegate_interface.h), returning a
 * TfLiteDelegate whose Prepare sees the graph through TfLiteContext
 * (tensorflow/lite/core/c/common.h). Only the leading fields of those structs are declared
 * here; TensorFlow only ever appends fields, so the prefix is the same in tflite-runtime 2.14
 * and in LiteRT (TensorFlow 2.2x), which is what lets one build serve both runtimes.
 *
 * Options (from load_delegate's options dict, else the environment variable FAKE_DELEGATE_<KEY>,
 * which is how the tests steer it when it is loaded under the name libedgetpu.so.1):
 *   claim = none | SOFTMAX   claim no nodes (the default), or every SOFTMAX node and run it here
 *   mode  = exact | corrupt  the claimed SOFTMAX computes softmax, or writes a uniform output
 *                            (proves the runtime really runs this kernel, not its own)
 *   fail  = create           tflite_plugin_create_delegate reports an error and returns NULL
 *   crash = create | prepare a SIGSEGV there: what a libedgetpu built from another TensorFlow
 *                            release does to the process
 * Any other option (the Edge TPU's "device") is recorded and can be read back, through the
 * fake_delegate_* functions in the same process, or in the file FAKE_DELEGATE_LOG names (one line
 * per create and per destroy) from a child process.
 */
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the TFLite C ABI (prefixes of the structs in tensorflow/lite/core/c/common.h) ---- */
typedef enum { kTfLiteOk = 0, kTfLiteError = 1, kTfLiteDelegateError = 2 } TfLiteStatus;
typedef enum { kTfLiteFloat32 = 1, kTfLiteUInt8 = 3, kTfLiteInt8 = 9 } TfLiteType;
enum { kTfLiteBuiltinSoftmax = 25 };

typedef struct TfLiteIntArray { int size; int data[]; } TfLiteIntArray;
typedef struct { float scale; int32_t zero_point; } TfLiteQuantizationParams;

typedef struct TfLiteTensor {
    int type;                        /* TfLiteType */
    union { void *data; float *f; int8_t *int8; uint8_t *uint8; } data;
    TfLiteIntArray *dims;
    TfLiteQuantizationParams params;
    int allocation_type;
    size_t bytes;
    const void *allocation;
    const char *name;
    struct TfLiteDelegate *delegate;
    int buffer_handle;
    bool data_is_stale;
    bool is_variable;
    struct { int type; void *params; } quantization;
    void *sparsity;
    const TfLiteIntArray *dims_signature;
    /* the whole struct: context->tensors is an array of these (context->GetTensor is left NULL
       by TFLite, which sets it only in TFLite Micro) */
} TfLiteTensor;

typedef struct TfLiteNode {
    TfLiteIntArray *inputs;
    TfLiteIntArray *outputs;
    TfLiteIntArray *intermediates;
    TfLiteIntArray *temporaries;
    void *user_data;
    void *builtin_data;
    /* ... */
} TfLiteNode;

struct TfLiteContext;
struct TfLiteDelegate;

typedef struct TfLiteRegistration {
    void *(*init)(struct TfLiteContext *context, const char *buffer, size_t length);
    void (*free)(struct TfLiteContext *context, void *buffer);
    TfLiteStatus (*prepare)(struct TfLiteContext *context, TfLiteNode *node);
    TfLiteStatus (*invoke)(struct TfLiteContext *context, TfLiteNode *node);
    const char *(*profiling_string)(const struct TfLiteContext *context, const TfLiteNode *node);
    int32_t builtin_code;
    const char *custom_name;
    int version;
    /* registration_external, async_kernel, inplace_operator (newer releases) and room for more:
       passed by value, so ours is a zeroed superset of what any release reads */
    void *reserved[8];
} TfLiteRegistration;

typedef struct TfLiteContext {
    size_t tensors_size;
    TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext *context, TfLiteIntArray **execution_plan);
    TfLiteTensor *tensors;
    void *impl_;
    TfLiteStatus (*ResizeTensor)(struct TfLiteContext *, TfLiteTensor *tensor, TfLiteIntArray *new_size);
    void (*ReportError)(struct TfLiteContext *, const char *msg, ...);
    TfLiteStatus (*AddTensors)(struct TfLiteContext *, int tensors_to_add, int *first_new_tensor_index);
    TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext *, int node_index, TfLiteNode **node,
                                           TfLiteRegistration **registration);
    TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(struct TfLiteContext *, TfLiteRegistration registration,
                                                          const TfLiteIntArray *nodes_to_replace,
                                                          struct TfLiteDelegate *delegate);
    int recommended_num_threads;
    void *GetExternalContext;
    void *SetExternalContext;
    bool allow_fp32_relax_to_fp16;
    void *profiler;
    void *AllocatePersistentBuffer;
    void *AllocateBufferForEval;
    void *RequestScratchBufferInArena;
    void *GetScratchBuffer;
    void *ResizeTensorExplicit;
    void *PreviewDelegatePartitioning;
    /* ... GetTensor and more: NULL or absent in TFLite (set by TFLite Micro only) */
} TfLiteContext;

typedef struct TfLiteDelegate {
    void *data_;
    TfLiteStatus (*Prepare)(TfLiteContext *context, struct TfLiteDelegate *delegate);
    void *CopyFromBufferHandle;
    void *CopyToBufferHandle;
    void *FreeBufferHandle;
    int64_t flags;
    void *opaque_delegate_builder; /* NULL: the classic (non-opaque) delegate interface */
    void *reserved[4];
} TfLiteDelegate;

typedef struct TfLiteDelegateParams {
    TfLiteDelegate *delegate;
    TfLiteIntArray *nodes_to_replace;
    TfLiteIntArray *input_tensors;
    TfLiteIntArray *output_tensors;
} TfLiteDelegateParams;

typedef struct { float beta; } TfLiteSoftmaxParams;

/* ---- state the tests read back through ctypes ---- */
static long invocations;       /* delegate kernel invokes */
static long claimed;           /* nodes claimed by the last Prepare */
static long created, destroyed;
static char options_seen[1024]; /* "key=value;..." of the last create */

long fake_delegate_invocations(void) { return invocations; }
long fake_delegate_claimed(void) { return claimed; }
long fake_delegate_created(void) { return created; }
long fake_delegate_destroyed(void) { return destroyed; }
const char *fake_delegate_options(void) { return options_seen; }
void fake_delegate_reset(void) { invocations = claimed = created = destroyed = 0; options_seen[0] = 0; }

typedef struct {
    bool claim_softmax;
    bool corrupt;
    bool crash_in_prepare;
} Settings;

typedef struct {
    int input, output;
    float beta;
    bool corrupt;
} Kernel;

static const char *option(const char *key, char **keys, char **values, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (strcmp(keys[i], key) == 0) return values[i];
    char name[64];
    snprintf(name, sizeof name, "FAKE_DELEGATE_%s", key);
    for (char *c = name; *c; c++) *c = (char)((*c >= 'a' && *c <= 'z') ? *c - 32 : *c);
    return getenv(name);
}

static void log_line(const char *what, const char *text) {
    const char *path = getenv("FAKE_DELEGATE_LOG");
    if (!path) return;
    FILE *file = fopen(path, "a");
    if (!file) return;
    fprintf(file, "%s %s\n", what, text);
    fclose(file);
}

static void crash(void) {
    volatile int *nowhere = NULL;
    *nowhere = 1; /* a real SIGSEGV, as from a mismatched struct layout */
    raise(SIGSEGV);
}

/* ---- the delegate kernel: one claimed SOFTMAX ---- */
static void *kernel_init(TfLiteContext *context, const char *buffer, size_t length) {
    (void)length;
    const TfLiteDelegateParams *params = (const TfLiteDelegateParams *)buffer;
    Settings *settings = (Settings *)params->delegate->data_;
    Kernel *kernel = calloc(1, sizeof *kernel);
    kernel->input = params->input_tensors->data[0];
    kernel->output = params->output_tensors->data[0];
    kernel->corrupt = settings->corrupt;
    kernel->beta = 1.0f;
    /* the original node's beta: look the node up again */
    TfLiteNode *node;
    TfLiteRegistration *registration;
    if (context->GetNodeAndRegistration(context, params->nodes_to_replace->data[0], &node, &registration) == kTfLiteOk
        && node->builtin_data)
        kernel->beta = ((TfLiteSoftmaxParams *)node->builtin_data)->beta;
    return kernel;
}

static void kernel_free(TfLiteContext *context, void *buffer) { (void)context; free(buffer); }

static TfLiteStatus kernel_prepare(TfLiteContext *context, TfLiteNode *node) {
    (void)node;
    (void)context;
    return kTfLiteOk; /* the output keeps the shape the model gave it */
}

static int elements(const TfLiteTensor *tensor) {
    int count = 1;
    for (int i = 0; i < tensor->dims->size; i++) count *= tensor->dims->data[i];
    return count;
}

static float read_value(const TfLiteTensor *t, int i) {
    switch (t->type) {
        case kTfLiteFloat32: return t->data.f[i];
        case kTfLiteInt8: return (t->data.int8[i] - t->params.zero_point) * t->params.scale;
        case kTfLiteUInt8: return (t->data.uint8[i] - t->params.zero_point) * t->params.scale;
        default: return 0.0f;
    }
}

static void write_value(TfLiteTensor *t, int i, float value) {
    long q;
    switch (t->type) {
        case kTfLiteFloat32: t->data.f[i] = value; return;
        case kTfLiteInt8:
            q = lroundf(value / t->params.scale) + t->params.zero_point;
            t->data.int8[i] = (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
            return;
        case kTfLiteUInt8:
            q = lroundf(value / t->params.scale) + t->params.zero_point;
            t->data.uint8[i] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
            return;
        default: return;
    }
}

static TfLiteStatus kernel_invoke(TfLiteContext *context, TfLiteNode *node) {
    Kernel *kernel = (Kernel *)node->user_data;
    TfLiteTensor *input = &context->tensors[kernel->input];
    TfLiteTensor *output = &context->tensors[kernel->output];
    int count = elements(input);
    int classes = input->dims->data[input->dims->size - 1];
    invocations++;
    for (int row = 0; row < count / classes; row++) {
        float top = -INFINITY, sum = 0.0f, values[4096];
        if (classes > 4096) return kTfLiteError;
        for (int c = 0; c < classes; c++) {
            values[c] = read_value(input, row * classes + c) * kernel->beta;
            if (values[c] > top) top = values[c];
        }
        for (int c = 0; c < classes; c++) sum += (values[c] = expf(values[c] - top));
        for (int c = 0; c < classes; c++)
            write_value(output, row * classes + c, kernel->corrupt ? 1.0f / classes : values[c] / sum);
    }
    return kTfLiteOk;
}

/* ---- the delegate ---- */
static TfLiteStatus delegate_prepare(TfLiteContext *context, TfLiteDelegate *delegate) {
    Settings *settings = (Settings *)delegate->data_;
    if (settings->crash_in_prepare) crash();
    claimed = 0;
    if (!settings->claim_softmax) return kTfLiteOk; /* claims nothing: every node stays on the CPU */
    TfLiteIntArray *plan;
    if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteDelegateError;
    TfLiteIntArray *nodes = calloc(1, sizeof(TfLiteIntArray) + sizeof(int) * (size_t)plan->size);
    for (int i = 0; i < plan->size; i++) {
        TfLiteNode *node;
        TfLiteRegistration *registration;
        if (context->GetNodeAndRegistration(context, plan->data[i], &node, &registration) != kTfLiteOk) continue;
        if (registration->builtin_code != kTfLiteBuiltinSoftmax || node->inputs->size != 1) continue;
        const TfLiteTensor *input = &context->tensors[node->inputs->data[0]];
        if ((size_t)node->inputs->data[0] >= context->tensors_size || !input->dims || input->dims->size < 1 ||
            (input->type != kTfLiteFloat32 && input->type != kTfLiteInt8 && input->type != kTfLiteUInt8)) {
            /* not what a SOFTMAX input looks like: this runtime's TfLiteTensor differs from ours */
            context->ReportError(context, "fake delegate: unexpected TfLiteTensor layout");
            free(nodes);
            return kTfLiteDelegateError;
        }
        nodes->data[nodes->size++] = plan->data[i];
    }
    claimed = nodes->size;
    TfLiteStatus status = kTfLiteOk;
    if (nodes->size > 0) {
        TfLiteRegistration kernel;
        memset(&kernel, 0, sizeof kernel);
        kernel.init = kernel_init;
        kernel.free = kernel_free;
        kernel.prepare = kernel_prepare;
        kernel.invoke = kernel_invoke;
        kernel.custom_name = "FakeDelegateSoftmax";
        kernel.version = 1;
        status = context->ReplaceNodeSubsetsWithDelegateKernels(context, kernel, nodes, delegate);
    }
    free(nodes);
    return status;
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t count,
                                              void (*report_error)(const char *)) {
    size_t used = 0;
    options_seen[0] = 0;
    for (size_t i = 0; i < count; i++)
        used += (size_t)snprintf(options_seen + used, used < sizeof options_seen ? sizeof options_seen - used : 0,
                                 "%s=%s;", keys[i], values[i]);
    const char *crash_at = option("crash", keys, values, count);
    const char *fail = option("fail", keys, values, count);
    const char *claim = option("claim", keys, values, count);
    const char *mode = option("mode", keys, values, count);
    if (crash_at && strcmp(crash_at, "create") == 0) crash();
    if (fail && strcmp(fail, "create") == 0) {
        if (report_error) report_error("fake delegate: told to fail (fail=create)");
        return NULL;
    }
    Settings *settings = calloc(1, sizeof *settings);
    settings->claim_softmax = claim && strcmp(claim, "SOFTMAX") == 0;
    settings->corrupt = mode && strcmp(mode, "corrupt") == 0;
    settings->crash_in_prepare = crash_at && strcmp(crash_at, "prepare") == 0;
    TfLiteDelegate *delegate = calloc(1, sizeof *delegate);
    delegate->data_ = settings;
    delegate->Prepare = delegate_prepare;
    delegate->flags = 0;
    created++;
    log_line("create", options_seen);
    return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate) {
    if (!delegate) return;
    char counts[128];
    free(delegate->data_);
    free(delegate);
    destroyed++;
    snprintf(counts, sizeof counts, "invocations=%ld claimed=%ld", invocations, claimed);
    log_line("destroy", counts);
}
