// Writing and checking the 64-byte header that every packed format of
// packed_formats.h begins with. The format-specific packers and validators
// (pack_*.cpp) build on these, so every format reports a bad buffer in the
// same words.
#pragma once

#include "packed_formats.h"

#include <cstdint>
#include <string>

namespace edgevla {

struct PackedHeaderFields {
    edgevla_packed_format format;
    uint16_t version;
    uint16_t block_n, block_k;
    int64_t n, k;
    uint64_t param0, param1;
    uint64_t total_bytes;
};

// Writes the header, checksum included, into out[0..64).
void write_packed_header(const PackedHeaderFields& fields, uint8_t* out);

// The checks every format shares: length >= 64, magic, format == expected,
// the version this build reads, checksum, header size. Returns "" and fills
// *header, or why not (one sentence, to follow "packed ").
std::string check_packed_header(const uint8_t* data, uint64_t length, edgevla_packed_format expected,
                                edgevla_packed_header* header);

// The messages of the format-specific checks.
std::string corrupt_block_sizes(const edgevla_packed_header& header);
std::string impossible_shape(const edgevla_packed_header& header);
std::string offsets_do_not_match(const edgevla_packed_header& header);
std::string length_does_not_match(uint64_t length, const edgevla_packed_header& header);

// Larger N than this is no linear layer; the bound keeps every size product
// of every layout far from int64 overflow.
constexpr int64_t kMaxPackedN = int64_t{1} << 31;

}  // namespace edgevla
