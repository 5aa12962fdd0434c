#!/usr/bin/env bash
# Nsight Compute of butterfly(128)'s kernels at 32k and 128k (16 heads, D=128, bf16): does the
# backward's excess growth from 32k to 128k (5.4x the time for 4.9x the blocks, tenth session)
# come from L2 misses? DRAM bytes, L2 hit rate and duration of the forward, dK/dV and dQ kernels.
# One device call; text reports in $OUT/ncu_bfly_*.txt, a summary on stdout.
set -u
source benchmarks/device_setup.sh
METRICS="gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,lts__t_sectors_srcunit_tex_op_read.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed"
for n in 32768 131072; do
  for kernel in forward dkdv dq_kernel; do
    pass=bwd; [ "$kernel" = forward ] && pass=fwd
    ncu --metrics "$METRICS" --kernel-name "regex:$kernel" --launch-skip 1 --launch-count 1 \
      python3 benchmarks/profile_once.py 'butterfly(128)' --seq-len $n --pass $pass > "$OUT/ncu_bfly_${kernel}_$n.txt" 2>&1
    echo "== $kernel $n"; grep -E "gpu__time|dram__|lts__|sm__throughput" "$OUT/ncu_bfly_${kernel}_$n.txt"
  done
done
