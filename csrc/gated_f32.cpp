// The baseline reference of gated_f32.h, and the threaded dispatch of the
// kernel tables' copies (gated_rows.h, compiled per ISA under arch/).
#include "gated_f32.h"

#include "dispatch.h"
#include "gated_rows.h"
#include "split_rows.h"

namespace edgevla {

// ~20 flops a value: below ~2^15 values per thread the hand-off costs more than it saves.
void gated_f32(const GatedF32Args& args) { split_rows(args, active_isa().gated_f32, args.m, args.m * args.n, 15); }

void gated_f32_ref(const GatedF32Args& args) { gated_f32_rows(args, 0, args.m); }

}  // namespace edgevla
