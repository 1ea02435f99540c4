#include "packed_header.h"

#include "cpu_kernels.h"

#include <cstring>

namespace edgevla {
namespace {

struct FormatInfo {
    edgevla_packed_format format;
    uint16_t version;
    const char* name;         // packed_info()["format"]
    const char* description;  // in messages
    const char* packer;       // the Python function that makes it
};

constexpr FormatInfo kFormats[] = {
    {EDGEVLA_PACKED_FORMAT_S8_N16K4, EDGEVLA_PACKED_S8_N16K4_VERSION, "s8_n16k4", "int8 N16K4", "pack_weight_s8"},
    {EDGEVLA_PACKED_FORMAT_SPARSE_F32_N16W32, EDGEVLA_PACKED_SPARSE_VERSION, "sparse_f32_n16w32",
     "unstructured sparse float32", "pack_sparse_f32"},
    {EDGEVLA_PACKED_FORMAT_SPARSE_S8_N16W32, EDGEVLA_PACKED_SPARSE_VERSION, "sparse_s8_n16w32",
     "unstructured sparse int8", "pack_sparse_s8"},
    {EDGEVLA_PACKED_FORMAT_2TO4_F32_N16K16, EDGEVLA_PACKED_2TO4_VERSION, "2to4_f32_n16k16", "2:4 sparse float32",
     "pack_2to4_f32"},
    {EDGEVLA_PACKED_FORMAT_2TO4_S8_N16K16, EDGEVLA_PACKED_2TO4_VERSION, "2to4_s8_n16k16", "2:4 sparse int8",
     "pack_2to4_s8"},
    {EDGEVLA_PACKED_FORMAT_W4_N16K8, EDGEVLA_PACKED_W4_VERSION, "w4_n16k8", "int4 group-wise", "pack_w4"},
};

const FormatInfo* format_info(uint16_t format) {
    for (const FormatInfo& info : kFormats) {
        if (info.format == format) return &info;
    }
    return nullptr;
}

std::string format_text(uint16_t format) {
    const FormatInfo* info = format_info(format);
    std::string text = std::to_string(format);
    if (info != nullptr) text += std::string(" (") + info->description + ", made by " + info->packer + ")";
    return text;
}

std::string shape_text(const edgevla_packed_header& header) {
    return "N = " + std::to_string(header.n) + ", K = " + std::to_string(header.k);
}

}  // namespace

const char* packed_format_name(uint16_t format) {
    const FormatInfo* info = format_info(format);
    return info == nullptr ? "" : info->name;
}

void write_packed_header(const PackedHeaderFields& fields, uint8_t* out) {
    edgevla_packed_header header{};
    header.magic = EDGEVLA_PACKED_MAGIC;
    header.format = static_cast<uint16_t>(fields.format);
    header.version = fields.version;
    header.block_n = fields.block_n;
    header.block_k = fields.block_k;
    header.header_bytes = sizeof(edgevla_packed_header);
    header.n = fields.n;
    header.k = fields.k;
    header.param[0] = fields.param0;
    header.param[1] = fields.param1;
    header.total_bytes = fields.total_bytes;
    std::memcpy(out, &header, sizeof header);
    header.header_checksum = edgevla_packed_header_checksum(out);
    std::memcpy(out, &header, sizeof header);
}

namespace {

// The checks after the magic: version, checksum, header size, and (when
// check_length) that the buffer is as long as the header says.
std::string check_common(const uint8_t* data, uint64_t length, edgevla_packed_header* header, bool check_length) {
    if (length < sizeof *header) {
        return "is " + std::to_string(length) + " bytes, shorter than the 64-byte header of a packed weight";
    }
    std::memcpy(header, data, sizeof *header);
    if (header->magic != EDGEVLA_PACKED_MAGIC) {
        return "does not start with the magic bytes 'EVLA' of a packed weight (not made by an edgevla pack_* "
               "function?)";
    }
    const FormatInfo* info = format_info(header->format);
    if (info == nullptr) {
        return "has packed format " + std::to_string(header->format) + ", which this build does not know";
    }
    if (header->version != info->version) {
        return "has format version " + std::to_string(header->version) + ", this build reads version " +
               std::to_string(info->version) + ": pack the weight again with this edgevla";
    }
    if (header->header_checksum != edgevla_packed_header_checksum(data)) {
        return "has a header whose checksum does not match its contents (corrupt header)";
    }
    if (header->header_bytes != sizeof *header) return corrupt_block_sizes(*header);
    if (check_length && length != header->total_bytes) return length_does_not_match(length, *header);
    return "";
}

}  // namespace

std::string read_packed_header(const uint8_t* data, uint64_t length, edgevla_packed_header* header) {
    return check_common(data, length, header, true);
}

std::string check_packed_header(const uint8_t* data, uint64_t length, edgevla_packed_format expected,
                                edgevla_packed_header* header) {
    if (length >= sizeof *header) {
        // The format decides which function may read the buffer: say so before
        // anything else, whatever the format number.
        edgevla_packed_header peek;
        std::memcpy(&peek, data, sizeof peek);
        if (peek.magic == EDGEVLA_PACKED_MAGIC && peek.format != expected) {
            return "has packed format " + format_text(peek.format) + ", not " + format_text(expected);
        }
    }
    // The length is compared by the caller, after its layout checks: until
    // then the header's total_bytes is not known to be right.
    return check_common(data, length, header, false);
}

std::string corrupt_block_sizes(const edgevla_packed_header& header) {
    return "has a corrupt header (block sizes " + std::to_string(header.block_n) + "x" +
           std::to_string(header.block_k) + ", header size " + std::to_string(header.header_bytes) + ")";
}

std::string impossible_shape(const edgevla_packed_header& header) {
    return "has an impossible shape " + shape_text(header);
}

std::string offsets_do_not_match(const edgevla_packed_header& header) {
    return "has section offsets that do not match its shape " + shape_text(header) + " (corrupt header)";
}

std::string length_does_not_match(uint64_t length, const edgevla_packed_header& header) {
    return "is " + std::to_string(length) + " bytes, but its header says " + std::to_string(header.total_bytes) +
           " bytes for shape " + shape_text(header) + " (truncated or padded)";
}

}  // namespace edgevla
