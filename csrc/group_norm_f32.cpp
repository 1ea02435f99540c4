#include "group_norm_f32.h"
#include "group_norm_rows.h"

#include "dispatch.h"
#include "epilogue_math.h"
#include "layer_norm_s8.h"
#include "thread_pool.h"

#include <cmath>
#include <vector>

namespace edgevla {
namespace {

template <GroupNormActivation kActivation>
inline float activate(float v) {
    if constexpr (kActivation == GroupNormActivation::relu) return v > 0.0f ? v : 0.0f;
    if constexpr (kActivation == GroupNormActivation::mish) return group_norm_mish(v);  // as every ISA's copy
    return v;
}

// One sample's work, split over the threads by fixed chunks of the data (positions channels last, channels
// first whole channels), so that every sum is taken in the same order whatever the thread count.
struct Sample {
    const GroupNormF32Args* a;
    const float* x;
    float* y;
    const float* film_scale;  // this sample's [channels], or nullptr
    const float* film_shift;  // this sample's [channels], or nullptr
    const float* residual;    // this sample's, or nullptr
    int8_t* codes;            // this sample's, or nullptr
    int64_t chunks;
    std::vector<double> partial;  // [chunks][channels] channels last; [channels] channels first
    const float* mean;            // [channels], the group's mean per channel
    const float* factor;          // [channels]
    bool squares;                 // the pass sums (x - mean)^2, not x
};

// Channels last: positions [chunk * kChunk, ...) of one chunk. Channels first: one channel per chunk.
constexpr int64_t kChunk = 64;
// Each thread of a pass gets at least this many elements (~5 us of one core); smaller samples run on the
// calling thread.
constexpr int64_t kMinGroupNormElementsPerThread = int64_t{1} << 14;

void sum_chunk(Sample& s, int64_t chunk) {
    const GroupNormF32Args& a = *s.a;
    const int64_t c = a.channels;
    if (a.channels_last) {  // per-channel lanes: the active ISA's vectorized loop (group_norm_rows.h)
        const int64_t end = (chunk + 1) * kChunk < a.positions ? (chunk + 1) * kChunk : a.positions;
        active_isa().group_norm_sums(s.x + chunk * kChunk * c, end - chunk * kChunk, c, s.squares ? s.mean : nullptr,
                                     s.partial.data() + chunk * c);
        return;
    }
    const float* plane = s.x + chunk * a.positions;
    double sum = 0.0;
    if (s.squares) {
        const float m = s.mean[chunk];
        for (int64_t p = 0; p < a.positions; ++p) {
            const double d = static_cast<double>(plane[p] - m);
            sum += d * d;
        }
    } else {
        for (int64_t p = 0; p < a.positions; ++p) sum += static_cast<double>(plane[p]);
    }
    s.partial[static_cast<size_t>(chunk)] = sum;
}

// out = out * film_scale + film_shift per channel over one chunk's elements (either may be absent): a
// multiply then an add, each rounded, as the graph's Mul and Add.
void film_chunk(const Sample& s, int64_t chunk, float* out, int64_t count) {
    const int64_t c = s.a->channels;
    const float* scale = s.film_scale;
    const float* shift = s.film_shift;
    if (!s.a->channels_last) {  // one channel per chunk
        if (scale != nullptr) {
            const float f = scale[chunk];
            for (int64_t i = 0; i < count; ++i) out[i] = out[i] * f;
        }
        if (shift != nullptr) {
            const float t = shift[chunk];
            for (int64_t i = 0; i < count; ++i) out[i] = out[i] + t;
        }
        return;
    }
    for (int64_t row = 0; row < count / c; ++row) {
        float* __restrict o = out + row * c;
        if (scale != nullptr) {
            for (int64_t j = 0; j < c; ++j) o[j] = o[j] * scale[j];
        }
        if (shift != nullptr) {
            for (int64_t j = 0; j < c; ++j) o[j] = o[j] + shift[j];
        }
    }
}

// y = act((x - mean) * factor + shift), then the stage, over one chunk.
template <GroupNormActivation kActivation>
void normalize_chunk(const Sample& s, int64_t chunk) {
    const GroupNormF32Args& a = *s.a;
    const int64_t c = a.channels;
    int64_t first, count;  // the chunk's elements: [first, first + count) of the sample
    if (a.channels_last) {
        const int64_t end = (chunk + 1) * kChunk < a.positions ? (chunk + 1) * kChunk : a.positions;
        first = chunk * kChunk * c;
        count = (end - chunk * kChunk) * c;
        // the active ISA's vectorized loop (group_norm_rows.h), the same floats
        active_isa().group_norm_apply(s.x + first, s.y + first, end - chunk * kChunk, c, s.mean, s.factor, a.shift,
                                      kActivation);
    } else {
        first = chunk * a.positions;
        count = a.positions;
        const float m = s.mean[chunk], f = s.factor[chunk], shift = a.shift[chunk];
        const float* in = s.x + first;
        float* out = s.y + first;
        for (int64_t p = 0; p < a.positions; ++p) out[p] = activate<kActivation>((in[p] - m) * f + shift);
    }
    float* out = s.y + first;
    if (s.film_scale != nullptr || s.film_shift != nullptr) film_chunk(s, chunk, out, count);
    if (s.residual != nullptr) {
        const float* r = s.residual + first;
        for (int64_t i = 0; i < count; ++i) out[i] = out[i] + r[i];
    }
    if (a.relu_after) {
        for (int64_t i = 0; i < count; ++i) out[i] = edgevla_relu_f32(out[i]);
    }
    if (s.codes != nullptr) {
        QuantizeS8Args q;
        q.m = 1;
        q.k = q.ldx = q.ldq = count;
        q.x = out;
        q.scale = a.codes_scale;
        q.q = s.codes + first;
        active_isa().quantize_s8(q);
    }
}

void run_chunks(Sample& s, void (*pass)(Sample&, int64_t)) {
    struct Job {
        Sample* s;
        void (*pass)(Sample&, int64_t);
    } job{&s, pass};
    ThreadPool& pool = ThreadPool::global();
    const int64_t elements = s.a->channels * s.a->positions;
    int64_t parts = elements / kMinGroupNormElementsPerThread;
    parts = parts < pool.num_threads() ? parts : pool.num_threads();
    parts = parts < s.chunks ? parts : s.chunks;
    if (parts <= 1) {
        for (int64_t chunk = 0; chunk < s.chunks; ++chunk) pass(s, chunk);
        return;
    }
    pool.run(static_cast<int>(parts), [](void* context, int part, int count) {
        const Job& j = *static_cast<const Job*>(context);
        const int64_t end = j.s->chunks * (part + 1) / count;
        for (int64_t chunk = j.s->chunks * part / count; chunk < end; ++chunk) j.pass(*j.s, chunk);
    }, &job);
}

// Per-channel sums of the sample (x, or (x - mean)^2), each channel's in chunk order.
void channel_sums(Sample& s, bool squares, std::vector<double>& sums) {
    s.squares = squares;
    run_chunks(s, sum_chunk);
    const int64_t c = s.a->channels;
    if (!s.a->channels_last) {
        sums.assign(s.partial.begin(), s.partial.end());
        return;
    }
    sums.assign(static_cast<size_t>(c), 0.0);
    for (int64_t chunk = 0; chunk < s.chunks; ++chunk) {
        const double* part = s.partial.data() + chunk * c;
        for (int64_t j = 0; j < c; ++j) sums[j] += part[j];
    }
}

template <GroupNormActivation kActivation>
void normalize(Sample& s) {
    run_chunks(s, [](Sample& sample, int64_t chunk) { normalize_chunk<kActivation>(sample, chunk); });
}

}  // namespace

void group_norm_f32(const GroupNormF32Args& a) {
    const int64_t per_group = a.channels / a.groups;
    const double count = static_cast<double>(a.positions * per_group);
    const int64_t sample_size = a.channels * a.positions;
    std::vector<double> sums;
    std::vector<float> mean(static_cast<size_t>(a.channels)), factor(static_cast<size_t>(a.channels));
    Sample s;
    s.a = &a;
    s.chunks = a.channels_last ? (a.positions + kChunk - 1) / kChunk : a.channels;
    s.partial.resize(static_cast<size_t>(a.channels_last ? s.chunks * a.channels : a.channels));
    s.mean = mean.data();
    s.factor = factor.data();
    for (int64_t n = 0; n < a.batch; ++n) {
        s.x = a.x + n * sample_size;
        s.y = a.y + n * sample_size;
        s.film_scale = a.film_scale == nullptr ? nullptr : a.film_scale + n * a.film_scale_stride;
        s.film_shift = a.film_shift == nullptr ? nullptr : a.film_shift + n * a.film_shift_stride;
        s.residual = a.residual == nullptr ? nullptr : a.residual + n * sample_size;
        s.codes = a.codes == nullptr ? nullptr : a.codes + n * sample_size;
        channel_sums(s, false, sums);
        for (int64_t g = 0; g < a.groups; ++g) {
            double total = 0.0;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += sums[c];
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) mean[c] = static_cast<float>(total / count);
        }
        channel_sums(s, true, sums);
        for (int64_t g = 0; g < a.groups; ++g) {
            double total = 0.0;
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += sums[c];
            const double inv = 1.0 / std::sqrt(total / count + static_cast<double>(a.epsilon));
            for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
                factor[c] = static_cast<float>(inv * static_cast<double>(a.scale[c]));
            }
        }
        using Act = GroupNormActivation;
        switch (a.activation) {
            case Act::none: normalize<Act::none>(s); break;
            case Act::relu: normalize<Act::relu>(s); break;
            case Act::mish: normalize<Act::mish>(s); break;
        }
    }
}

}  // namespace edgevla
