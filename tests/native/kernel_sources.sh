# The sources of the CPU kernel library, as CMakeLists.txt builds them into
# edgevla_native (less build_info and the CUDA stubs), with the extra flags of
# each instruction-set file. Sourced by run_aarch64.sh and run_sanitizers.sh,
# which compile the kernels and csrc/tests/kernel_driver.cpp without CMake or
# Python; tests/test_native.py checks that this list and CMakeLists.txt agree.

# Baseline flags, every architecture.
KERNEL_SOURCES=(
  cpu_features.cpp
  gemm_ref.cpp
  packed_header.cpp
  pack_s8.cpp
  pack_sparse.cpp
  pack_2to4.cpp
  pack_w4.cpp
  dispatch.cpp
  thread_pool.cpp
  cpu_topology.cpp
  cpu_ops.cpp
  layer_norm_s8.cpp
  attention_f32.cpp
  windows.cpp
  group_norm_f32.cpp
  gated_f32.cpp
  rotary_f32.cpp
  arch/generic/attention_generic.cpp
  arch/generic/gemm_packed_generic.cpp
  arch/generic/sparse_generic.cpp
  arch/generic/gemm_2to4_generic.cpp
  arch/generic/gemm_w4_generic.cpp
  arch/generic/gemm_w4a8_generic.cpp
  arch/generic/layer_norm_s8_generic.cpp
  arch/generic/encoder_rows_generic.cpp
)

# Baseline flags, one architecture.
KERNEL_SOURCES_x86_64=(arch/x86_64/cpu_features_x86_64.cpp arch/x86_64/kernel_tables_x86_64.cpp)
KERNEL_SOURCES_aarch64=(arch/aarch64/cpu_features_aarch64.cpp arch/aarch64/kernel_tables_aarch64.cpp)

# Instruction-set files and their flags.
AVX2_SOURCES=(
  arch/x86_64/gemm_avx2.cpp
  arch/x86_64/sparse_avx2.cpp
  arch/x86_64/gemm_2to4_avx2.cpp
  arch/x86_64/gemm_w4_avx2.cpp
  arch/x86_64/gemm_w4a8_avx2.cpp
  arch/x86_64/layer_norm_s8_avx2.cpp
  arch/x86_64/encoder_rows_avx2.cpp
  arch/x86_64/attention_avx2.cpp
)
AVX2_FLAGS=(-mavx2 -mfma)
AVX_VNNI_SOURCES=(
  arch/x86_64/gemm_avx_vnni.cpp
  arch/x86_64/gemm_2to4_avx_vnni.cpp
)
AVX_VNNI_FLAGS=(-mavx2 -mfma -mavxvnni)
AVX512_SOURCES=(
  arch/x86_64/gemm_avx512_vnni.cpp
  arch/x86_64/sparse_avx512_vnni.cpp
  arch/x86_64/gemm_2to4_avx512_vnni.cpp
  arch/x86_64/gemm_w4_avx512_vnni.cpp
  arch/x86_64/gemm_w4a8_avx512_vnni.cpp
  arch/x86_64/layer_norm_s8_avx512.cpp
  arch/x86_64/encoder_rows_avx512.cpp
  arch/x86_64/attention_avx512.cpp
)
AVX512_FLAGS=(-mavx512f -mavx512bw -mavx512vl -mavx512vnni)
AMX_SOURCES=(
  arch/x86_64/gemm_amx.cpp
)
AMX_FLAGS=(-mavx512f -mavx512bw -mavx512vl -mavx512vnni -mamx-tile -mamx-int8)
NEON_DOT_SOURCES=(
  arch/aarch64/gemm_neon_dot.cpp
  arch/aarch64/sparse_neon_dot.cpp
  arch/aarch64/gemm_2to4_neon_dot.cpp
  arch/aarch64/gemm_w4_neon_dot.cpp
  arch/aarch64/gemm_w4a8_neon_dot.cpp
)
NEON_DOT_FLAGS=(-march=armv8.2-a+dotprod)

# Files that also get -fno-trapping-math (vectorized clamps; no result changes),
# on top of their list's flags.
NO_TRAPPING_MATH_SOURCES=(
  windows.cpp
  arch/generic/layer_norm_s8_generic.cpp
  arch/generic/encoder_rows_generic.cpp
  arch/x86_64/layer_norm_s8_avx2.cpp
  arch/x86_64/layer_norm_s8_avx512.cpp
  arch/x86_64/encoder_rows_avx2.cpp
  arch/x86_64/encoder_rows_avx512.cpp
)

# The float attention files (specified to a tolerance, not bit for bit): these
# flags come after their list's flags and the library's -ffp-contract=off.
ATTENTION_SOURCES=(
  arch/generic/attention_generic.cpp
  arch/x86_64/attention_avx2.cpp
  arch/x86_64/attention_avx512.cpp
)
ATTENTION_FLAGS=(-ffp-contract=fast -O3 -fno-trapping-math)
