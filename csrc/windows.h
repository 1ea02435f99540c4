// A convolution's input windows as the rows of its GEMM (im2col), and the
// channels-last transpose that feeds it.
//
// The native runtime runs a convolution of one group as a linear layer over
// its input's windows (edgevla/runtime/conv.py, ConvLayer): row (n, o...) of
// the GEMM's left operand is the window at output position o, its values in
// (kernel..., channel) order. With the input channels last, (N, spatial...,
// C), a window is kernel-row runs of `channels` (or, where the window row lies
// inside the input and dilation is 1, `kernel width x channels`) contiguous
// elements; positions outside the input (padding) read as zero, which is
// also the int8 zero point of the runtime's symmetric codes. gather_windows
// copies those runs straight from the unpadded input, so no padded copy of it
// is made. The reference is NumPy's strided window view of a zero-padded
// copy (tests/test_native_windows.py).
//
// Arguments are trusted (the bindings validate them): at most 3 spatial
// dimensions, every size >= 1 except pads >= 0, and out[i] the output size
// the geometry gives.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgevla {

constexpr int kMaxWindowDims = 3;

struct WindowGeometry {
    int dims = 0;  // spatial dimensions, 1 to kMaxWindowDims
    int64_t batch = 0;
    int64_t channels = 0;
    int64_t in[kMaxWindowDims] = {};
    int64_t out[kMaxWindowDims] = {};
    int64_t kernel[kMaxWindowDims] = {};
    int64_t stride[kMaxWindowDims] = {};
    int64_t dilation[kMaxWindowDims] = {};
    int64_t pad_begin[kMaxWindowDims] = {};
};

// Output position r of a 3-d geometry (as every kernel here sees it: fewer
// spatial dimensions get leading size-1 ones) as (n, o0, o1, o2), o2 fastest,
// and the walk to the next one.
struct OutputPosition {
    int64_t n, o0, o1, o2;

    OutputPosition(const WindowGeometry& g, int64_t r)
        : n(r / (g.out[2] * g.out[1] * g.out[0])), o0(r / (g.out[2] * g.out[1]) % g.out[0]),
          o1(r / g.out[2] % g.out[1]), o2(r % g.out[2]) {}

    void next(const WindowGeometry& g) {
        if (++o2 < g.out[2]) return;
        o2 = 0;
        if (++o1 < g.out[1]) return;
        o1 = 0;
        if (++o0 < g.out[0]) return;
        o0 = 0;
        ++n;
    }
};

// rows (batch * prod(out), prod(kernel) * channels) from x (batch, in...,
// channels), both C-contiguous, elements of `element_bytes` bytes.
void gather_windows(const WindowGeometry& g, size_t element_bytes, const uint8_t* x, uint8_t* rows);

// Rows [row_begin, row_end) of the same, written from `rows` on: a slab of
// the GEMM's left operand, for the thread that multiplies it (cpu_ops.h).
void gather_window_rows(const WindowGeometry& g, size_t element_bytes, const uint8_t* x, int64_t row_begin,
                        int64_t row_end, uint8_t* rows);

// MaxPool over the same windows: y (batch, out..., channels) from x (batch,
// in..., channels), both C-contiguous; positions outside x are left out of
// each maximum (as ONNX's padding with the lowest value does), and a NaN in a
// window gives NaN (as numpy.maximum). A window with no position inside x
// gives the type's lowest value (-inf for float32). float32 runs on the
// active ISA's kernel (max_pool_rows.h), split over the thread pool.
enum class PoolElement { int8, uint8, float32 };
void max_pool_windows(const WindowGeometry& g, PoolElement element, const uint8_t* x, uint8_t* y);

// y (batch, spatial, channels) from x (batch, channels, spatial), both
// C-contiguous: a channels-first value channels last.
void to_channels_last(int64_t batch, int64_t channels, int64_t spatial, size_t element_bytes, const uint8_t* x,
                      uint8_t* y);

}  // namespace edgevla
