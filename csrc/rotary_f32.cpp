// The baseline reference of rotary_f32.h, and the threaded dispatch of the
// kernel tables' copies (rotary_rows.h, compiled per ISA under arch/).
#include "rotary_f32.h"

#include "dispatch.h"
#include "rotary_rows.h"
#include "split_rows.h"

namespace edgevla {

// 3 flops a value: below ~2^16 values per thread the hand-off costs more than it saves.
void rotary_f32(const RotaryF32Args& args) { split_rows(args, active_isa().rotary_f32, args.m, args.m * args.d, 16); }

void rotary_f32_ref(const RotaryF32Args& args) { rotary_f32_rows(args, 0, args.m); }

}  // namespace edgevla
