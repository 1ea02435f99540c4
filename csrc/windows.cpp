#include "windows.h"

#include "dispatch.h"
#include "thread_pool.h"

#include <cstring>
#include <limits>
#include <type_traits>

namespace edgevla {
namespace {

// Copies n bytes with a few fixed-size moves: the runs of a window are short
// (a 7x7 stem over RGB: 21 bytes), where a call to memcpy costs more than the
// copy. The moves may overlap one another, never the bytes outside [0, n).
inline void copy_run(uint8_t* dst, const uint8_t* src, size_t n) {
    if (n > 64) {
        std::memcpy(dst, src, n);
    } else if (n >= 16) {
        size_t i = 0;
        for (; i + 16 <= n; i += 16) std::memcpy(dst + i, src + i, 16);
        if (i < n) std::memcpy(dst + n - 16, src + n - 16, 16);
    } else if (n >= 8) {
        uint64_t head, tail;
        std::memcpy(&head, src, 8);
        std::memcpy(&tail, src + n - 8, 8);
        std::memcpy(dst, &head, 8);
        std::memcpy(dst + n - 8, &tail, 8);
    } else if (n >= 4) {
        uint32_t head, tail;
        std::memcpy(&head, src, 4);
        std::memcpy(&tail, src + n - 4, 4);
        std::memcpy(dst, &head, 4);
        std::memcpy(dst + n - 4, &tail, 4);
    } else {
        for (size_t i = 0; i < n; ++i) dst[i] = src[i];
    }
}

// The geometry with leading size-1 spatial dimensions, so that it has exactly kMaxWindowDims.
WindowGeometry as_3d(const WindowGeometry& g) {
    WindowGeometry full = g;
    const int lead = kMaxWindowDims - g.dims;
    for (int i = 0; i < kMaxWindowDims; ++i) {
        const bool padding_dim = i < lead;
        const int from = i - lead;
        full.in[i] = padding_dim ? 1 : g.in[from];
        full.out[i] = padding_dim ? 1 : g.out[from];
        full.kernel[i] = padding_dim ? 1 : g.kernel[from];
        full.stride[i] = padding_dim ? 1 : g.stride[from];
        full.dilation[i] = padding_dim ? 1 : g.dilation[from];
        full.pad_begin[i] = padding_dim ? 0 : g.pad_begin[from];
    }
    full.dims = kMaxWindowDims;
    return full;
}

inline bool inside(int64_t i, int64_t size) { return i >= 0 && i < size; }

// One window row: kernel[2] taps along the last spatial dimension of input line `line`, starting at
// input position `first`, into dst. Returns the end of what it wrote.
uint8_t* gather_line(const WindowGeometry& g, size_t c_bytes, const uint8_t* line, int64_t first, uint8_t* dst) {
    const int64_t taps = g.kernel[2], size = g.in[2], dilation = g.dilation[2];
    if (dilation == 1) {  // the taps inside the input are one run
        int64_t begin = first < 0 ? -first : 0;
        int64_t end = size - first < taps ? size - first : taps;
        if (end < begin) end = begin = taps;  // no tap inside
        if (begin > 0) std::memset(dst, 0, static_cast<size_t>(begin) * c_bytes);
        if (end > begin) {
            copy_run(dst + begin * c_bytes, line + (first + begin) * c_bytes, static_cast<size_t>(end - begin) * c_bytes);
        }
        if (end < taps) std::memset(dst + end * c_bytes, 0, static_cast<size_t>(taps - end) * c_bytes);
        return dst + taps * c_bytes;
    }
    for (int64_t k = 0; k < taps; ++k, dst += c_bytes) {
        const int64_t i = first + k * dilation;
        if (inside(i, size)) {
            copy_run(dst, line + i * c_bytes, c_bytes);
        } else {
            std::memset(dst, 0, c_bytes);
        }
    }
    return dst;
}

template <typename T>
void transpose_to_channels_last(int64_t batch, int64_t channels, int64_t spatial, const T* x, T* y) {
    constexpr int64_t kBlock = 64;  // spatial positions per pass: reads stay sequential per channel
    for (int64_t n = 0; n < batch; ++n) {
        const T* image = x + n * channels * spatial;
        T* out = y + n * channels * spatial;
        for (int64_t s0 = 0; s0 < spatial; s0 += kBlock) {
            const int64_t s1 = s0 + kBlock < spatial ? s0 + kBlock : spatial;
            for (int64_t c = 0; c < channels; ++c) {
                const T* plane = image + c * spatial;
                for (int64_t s = s0; s < s1; ++s) out[s * channels + c] = plane[s];
            }
        }
    }
}

// The larger of m and v, NaN if either is (numpy.maximum's rule); integers plainly.
template <typename T>
inline T larger(T m, T v) {
    const T plain = v > m ? v : m;
    if constexpr (std::is_floating_point_v<T>) {
        return (v != v || m != m) ? v + m : plain;  // a sum with a NaN is NaN; a select, so it vectorizes
    }
    return plain;
}

template <typename T>
void max_pool(const WindowGeometry& g, const T* x, T* y, T lowest) {
    const int64_t c = g.channels;
    for (int64_t n = 0; n < g.batch; ++n) {
        const T* image = x + n * g.in[0] * g.in[1] * g.in[2] * c;
        for (int64_t o0 = 0; o0 < g.out[0]; ++o0) {
            for (int64_t o1 = 0; o1 < g.out[1]; ++o1) {
                for (int64_t o2 = 0; o2 < g.out[2]; ++o2, y += c) {
                    for (int64_t j = 0; j < c; ++j) y[j] = lowest;
                    for (int64_t k0 = 0; k0 < g.kernel[0]; ++k0) {
                        const int64_t i0 = o0 * g.stride[0] + k0 * g.dilation[0] - g.pad_begin[0];
                        if (!inside(i0, g.in[0])) continue;
                        for (int64_t k1 = 0; k1 < g.kernel[1]; ++k1) {
                            const int64_t i1 = o1 * g.stride[1] + k1 * g.dilation[1] - g.pad_begin[1];
                            if (!inside(i1, g.in[1])) continue;
                            for (int64_t k2 = 0; k2 < g.kernel[2]; ++k2) {
                                const int64_t i2 = o2 * g.stride[2] + k2 * g.dilation[2] - g.pad_begin[2];
                                if (!inside(i2, g.in[2])) continue;
                                const T* v = image + ((i0 * g.in[1] + i1) * g.in[2] + i2) * c;
                                for (int64_t j = 0; j < c; ++j) y[j] = larger(y[j], v[j]);
                            }
                        }
                    }
                }
            }
        }
    }
}

// Each thread of a float max pool gets at least this many tap x channel
// maxima (~10 us on one core); smaller pools run on the calling thread.
constexpr int64_t kMinPoolWorkPerThread = int64_t{1} << 16;

void max_pool_f32(const WindowGeometry& g, const float* x, float* y);

}  // namespace

void max_pool_windows(const WindowGeometry& geometry, PoolElement element, const uint8_t* x, uint8_t* y) {
    const WindowGeometry g = as_3d(geometry);
    switch (element) {
        case PoolElement::int8:
            max_pool(g, reinterpret_cast<const int8_t*>(x), reinterpret_cast<int8_t*>(y), int8_t{-128});
            break;
        case PoolElement::uint8: max_pool(g, x, y, uint8_t{0}); break;
        case PoolElement::float32: max_pool_f32(g, reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y)); break;
    }
}

namespace {

// The float max pool on the active ISA's kernel (max_pool_rows.h), its output positions split over the threads.
void max_pool_f32(const WindowGeometry& g, const float* x, float* y) {
    struct Job {
        const WindowGeometry* g;
        const float* x;
        float* y;
        int64_t positions;
        MaxPoolF32Kernel kernel;
    };
    Job job{&g, x, y, g.batch * g.out[0] * g.out[1] * g.out[2], active_isa().max_pool_f32};
    const int64_t work = job.positions * g.channels * g.kernel[0] * g.kernel[1] * g.kernel[2];
    ThreadPool& pool = ThreadPool::global();
    int64_t parts = work / kMinPoolWorkPerThread;
    parts = parts < pool.num_threads() ? parts : pool.num_threads();
    parts = parts < job.positions ? parts : job.positions;
    if (parts <= 1) {
        job.kernel(g, x, y, 0, job.positions);
        return;
    }
    pool.run(static_cast<int>(parts), [](void* context, int part, int count) {
        const Job& j = *static_cast<const Job*>(context);
        j.kernel(*j.g, j.x, j.y, j.positions * part / count, j.positions * (part + 1) / count);
    }, &job);
}

}  // namespace

void gather_window_rows(const WindowGeometry& geometry, size_t element_bytes, const uint8_t* x, int64_t row_begin,
                        int64_t row_end, uint8_t* rows) {
    const WindowGeometry g = as_3d(geometry);
    const size_t c_bytes = static_cast<size_t>(g.channels) * element_bytes;
    const int64_t line_bytes = g.in[2] * static_cast<int64_t>(c_bytes);  // one step along spatial dim 1
    const int64_t plane_bytes = g.in[1] * line_bytes;                      // one step along spatial dim 0
    const int64_t image_bytes = g.in[0] * plane_bytes;
    const size_t window_line = static_cast<size_t>(g.kernel[2]) * c_bytes;
    // The windows that lie wholly inside x along a dimension: output positions [inner_begin, inner_end).
    int64_t inner_begin[kMaxWindowDims], inner_end[kMaxWindowDims];
    for (int i = 0; i < kMaxWindowDims; ++i) {
        const int64_t extent = (g.kernel[i] - 1) * g.dilation[i] + 1;
        inner_begin[i] = (g.pad_begin[i] + g.stride[i] - 1) / g.stride[i];
        const int64_t last = g.in[i] - extent + g.pad_begin[i];  // the last inside window's start, + pad
        inner_end[i] = last < 0 ? 0 : last / g.stride[i] + 1;
        if (inner_end[i] > g.out[i]) inner_end[i] = g.out[i];
    }
    const auto inner = [&](int i, int64_t o) { return o >= inner_begin[i] && o < inner_end[i]; };
    uint8_t* dst = rows;
    OutputPosition at(g, row_begin);
    for (int64_t row = row_begin; row < row_end; ++row, at.next(g)) {
        const int64_t n = at.n, o0 = at.o0, o1 = at.o1, o2 = at.o2;
        const uint8_t* image = x + n * image_bytes;
        const int64_t first = o2 * g.stride[2] - g.pad_begin[2];
        if (g.dilation[2] == 1 && inner(0, o0) && inner(1, o1) && inner(2, o2)) {
            // The common case, a window inside x: one run per kernel line.
            const uint8_t* corner = image + (o0 * g.stride[0] - g.pad_begin[0]) * plane_bytes +
                                    (o1 * g.stride[1] - g.pad_begin[1]) * line_bytes + first * c_bytes;
            for (int64_t k0 = 0; k0 < g.kernel[0]; ++k0) {
                const uint8_t* src = corner + k0 * g.dilation[0] * plane_bytes;
                for (int64_t k1 = 0; k1 < g.kernel[1]; ++k1, dst += window_line) {
                    copy_run(dst, src + k1 * g.dilation[1] * line_bytes, window_line);
                }
            }
        } else {
            for (int64_t k0 = 0; k0 < g.kernel[0]; ++k0) {
                const int64_t i0 = o0 * g.stride[0] + k0 * g.dilation[0] - g.pad_begin[0];
                for (int64_t k1 = 0; k1 < g.kernel[1]; ++k1) {
                    const int64_t i1 = o1 * g.stride[1] + k1 * g.dilation[1] - g.pad_begin[1];
                    if (!inside(i0, g.in[0]) || !inside(i1, g.in[1])) {
                        std::memset(dst, 0, window_line);
                        dst += window_line;
                        continue;
                    }
                    dst = gather_line(g, c_bytes, image + i0 * plane_bytes + i1 * line_bytes, first, dst);
                }
            }
        }
    }
}

void gather_windows(const WindowGeometry& g, size_t element_bytes, const uint8_t* x, uint8_t* rows) {
    int64_t total = g.batch;
    for (int i = 0; i < g.dims; ++i) total *= g.out[i];
    gather_window_rows(g, element_bytes, x, 0, total, rows);
}

void to_channels_last(int64_t batch, int64_t channels, int64_t spatial, size_t element_bytes, const uint8_t* x,
                      uint8_t* y) {
    switch (element_bytes) {
        case 1: transpose_to_channels_last(batch, channels, spatial, x, y); break;
        case 2:
            transpose_to_channels_last(batch, channels, spatial, reinterpret_cast<const uint16_t*>(x),
                                       reinterpret_cast<uint16_t*>(y));
            break;
        case 4:
            transpose_to_channels_last(batch, channels, spatial, reinterpret_cast<const uint32_t*>(x),
                                       reinterpret_cast<uint32_t*>(y));
            break;
        default: {  // any other element size, byte by byte
            for (int64_t n = 0; n < batch; ++n) {
                for (int64_t c = 0; c < channels; ++c) {
                    for (int64_t s = 0; s < spatial; ++s) {
                        std::memcpy(y + ((n * spatial + s) * channels + c) * element_bytes,
                                    x + ((n * channels + c) * spatial + s) * element_bytes, element_bytes);
                    }
                }
            }
        }
    }
}

}  // namespace edgevla
