#!/usr/bin/env bash
# Nsight Compute profiles behind BENCHMARKS.md's sixth-session notes (one device call):
#   the dK/dV kernel on the fully listed mask, walking its columns forwards (1) and backwards (2);
#   the forward on local(1k) & causal (one program per SM) and butterfly(128) (two per SM).
# Writes the text reports to $OUT/ncu_*.txt.
set -u
source benchmarks/device_setup.sh
NCU="ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section SchedulerStats --launch-skip 1 --launch-count 1"
for walk in 1 2; do
  $NCU --kernel-name regex:dkdv python3 benchmarks/profile_once.py 'local(8192)' --seq-len 8192 --batch 2 --pass bwd --dkdv-walk $walk > "$OUT/ncu_dkdv_listed_walk$walk.txt" 2>&1
done
for pattern in 'local(1k) & causal' 'butterfly(128)'; do
  name=$(echo "$pattern" | tr -cd 'a-z0-9')
  $NCU --kernel-name regex:forward python3 benchmarks/profile_once.py "$pattern" --pass fwd > "$OUT/ncu_fwd_$name.txt" 2>&1
done
grep -h -E "^  [a-z_]+|Duration|L2 Hit Rate|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Warp Cycles Per Issued|Issued Warp|No Eligible|One or More Eligible|Active Warps Per Scheduler|Eligible Warps|L1/TEX Hit|Mem Busy|Max Bandwidth" "$OUT"/ncu_*.txt | head -150
