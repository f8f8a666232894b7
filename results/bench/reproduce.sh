#!/usr/bin/env bash
# Re-creates every measured file in results/bench/ and the fitted profiles in results/clusters/.
# Run from the repository root as root (network namespaces). The benchmarks run at nice -5 so
# other work on a shared 2-core host disturbs them less; expect +-30% noise at small sizes.
#   bash results/bench/reproduce.sh [step...]    steps: fabric mpi latency local overhead fit plots
set -euo pipefail
cd "$(dirname "$0")/../.."
R=results/bench
C=results/clusters
steps=("${@:-fabric mpi latency local overhead fit plots}")
run() { echo "+ $*"; nice -n -5 "$@"; }
want() { [[ " ${steps[*]} " == *" $1 "* ]]; }

if want fabric; then
  rm -f $R/fabric_2x2_1gbit.jsonl
  run python -m bench.fabric --nodes 2 --ranks-per-node 2 --rate 1gbit -- \
    all_reduce,all_gather,reduce_scatter,all_to_all,broadcast,send_recv \
    -b 16K -e 32M -f 2 -n 10 -w 2 -g 0,2 --layout consecutive,strided \
    -o $R/fabric_2x2_1gbit.jsonl | tee $R/fabric_2x2_1gbit.txt
fi
MPI_RUNS=(mpi mpi_run2 mpi_run3 mpi_run4)  # the same sweep four times: this host drifts
if want mpi; then
  for name in "${MPI_RUNS[@]}"; do
    rm -f $R/fabric_2x2_1gbit_$name.jsonl
    run python -m bench.fabric --nodes 2 --ranks-per-node 2 --rate 1gbit --timeout 580 -- \
      all_reduce,all_gather,reduce_scatter,all_to_all,broadcast,send_recv \
      -b 16K -e 32M -f 2 -n 10 -w 2 -g 0,2 --layout consecutive,strided --backend mpi \
      -o $R/fabric_2x2_1gbit_$name.jsonl | tee $R/fabric_2x2_1gbit_$name.txt
  done
fi
if want latency; then
  for d in 0 2000; do
    extra=(); [ "$d" != 0 ] && extra=(--delay-us "$d")
    rm -f $R/fabric_2x1_1gbit_delay${d}us.jsonl
    run python -m bench.fabric --nodes 2 --ranks-per-node 1 --rate 1gbit "${extra[@]}" -- \
      all_reduce,send_recv -b 1K -e 4M -f 4 -n 20 -w 2 \
      -o $R/fabric_2x1_1gbit_delay${d}us.jsonl | tee $R/fabric_2x1_1gbit_delay${d}us.txt
  done
fi
if want local; then
  rm -f $R/local_gloo_4r.jsonl $R/local_mpi_4r.jsonl
  run python -m bench.launch -n 4 -- all -b 8 -e 4M -f 8 -n 10 -w 2 --backend gloo \
    -d float32,bfloat16 -g 0,2 --layout consecutive,strided -o $R/local_gloo_4r.jsonl \
    | tee $R/local_gloo_4r.txt
  run mpiexec -n 4 python -m bench all -b 8 -e 4M -f 8 -n 10 -w 2 --backend mpi \
    -g 0,2 --layout consecutive,strided -o $R/local_mpi_4r.jsonl | tee $R/local_mpi_4r.txt
fi
if want overhead; then
  run torchrun --nproc-per-node 2 -m bench.overhead --backend gloo 2>/dev/null \
    | tee $R/overhead_gloo_2r.txt
  run mpiexec -n 2 python -m bench.overhead --backend mpi | tee $R/overhead_mpi_2r.txt
fi
if want fit; then
  python -m cost_models.fit $R/fabric_2x2_1gbit.jsonl -o $C/fabric_2x2_1gbit.json \
    --base-cluster dgx-h100 --holdout-every-other-size --holdout "layout == 'strided'" \
    --plot $C/fabric_2x2_1gbit_fit.png | tee $C/fabric_2x2_1gbit_fit.txt
  fit_mpi() {  # output name, then the results files (one run, or all of them pooled)
    local out=$1; shift
    echo "$ python -m cost_models.fit $* -o $C/$out.json --base-cluster dgx-h100" \
      "--holdout-every-other-size --holdout \"layout == 'strided'\" --plot $C/${out}_fit.png" \
      > $C/${out}_fit.txt
    python -m cost_models.fit "$@" -o $C/$out.json --base-cluster dgx-h100 \
      --holdout-every-other-size --holdout "layout == 'strided'" --plot $C/${out}_fit.png \
      | tee -a $C/${out}_fit.txt
  }
  for name in "${MPI_RUNS[@]}"; do fit_mpi fabric_2x2_1gbit_$name $R/fabric_2x2_1gbit_$name.jsonl; done
  pooled=(); for name in "${MPI_RUNS[@]}"; do pooled+=("$R/fabric_2x2_1gbit_$name.jsonl"); done
  fit_mpi fabric_2x2_1gbit_mpi_pooled "${pooled[@]}"
  # The latency experiment fits the fastest iteration (--statistic min): the link's latency
  # without the host's scheduling noise (4 ranks' worth of load on 2 shared cores).
  for d in 0 2000; do
    python -m cost_models.fit $R/fabric_2x1_1gbit_delay${d}us.jsonl --statistic min \
      -o $C/fabric_2x1_1gbit_delay${d}us.json --base-cluster dgx-h100 \
      | tee $C/fabric_2x1_1gbit_delay${d}us_fit.txt
  done
fi
if want plots; then
  python -m bench.plot $R/fabric_2x2_1gbit.jsonl -o $R/plots/fabric_2x2_1gbit
fi
