"""Who am I, who are my peers, and how do we talk: launcher detection and the backends.

The same command line runs under torchrun (RANK/WORLD_SIZE/LOCAL_RANK), srun
(SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID) and mpiexec (PMI_RANK/PMI_SIZE from MPICH,
OMPI_COMM_WORLD_* from Open MPI, PMIX_RANK). Backends: torch.distributed with nccl (GPUs)
or gloo (CPUs), and MPI through mpi4py. Nodes are told apart by host name, gathered from
every rank, so emulated nodes (namespaces with their own UTS name) count as nodes.

torch and mpi4py are imported here and in bench/collectives.py only, and only when used.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

BACKENDS = ("gloo", "nccl", "mpi")


class LaunchError(RuntimeError):
    """The environment does not say how to reach the other ranks."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    launcher: str  # torchrun, env (RANK/WORLD_SIZE set by hand), srun, mpiexec or single
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _first(env, *names: str) -> str | None:
    return next((env[n] for n in names if n in env), None)


def detect_launch(env=None) -> Launch:
    """Read rank and world from the launcher's environment (torchrun, MPI, Slurm, none)."""
    env = os.environ if env is None else env
    port = int(env.get("MASTER_PORT", "29500"))
    addr = env.get("MASTER_ADDR", "127.0.0.1")
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, bench.launch, bench.fabric
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
        return Launch(launcher=launcher, rank=int(env["RANK"]),
                      world_size=int(env["WORLD_SIZE"]),
                      local_rank=int(env.get("LOCAL_RANK", "0")), master_addr=addr,
                      master_port=port)
    mpi_rank = _first(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    mpi_size = _first(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if mpi_rank is not None and mpi_size is not None:
        local = _first(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID") or "0"
        return Launch(launcher="mpiexec", rank=int(mpi_rank), world_size=int(mpi_size),
                      local_rank=int(local), master_addr=addr, master_port=port)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _slurm_launch(env, addr if "MASTER_ADDR" in env else None, port)
    return Launch(launcher="single", rank=0, world_size=1, local_rank=0, master_addr=addr,
                  master_port=port)


def _slurm_launch(env, addr: str | None, port: int) -> Launch:
    """srun: rank 0 runs on the first node of the step, so it hosts the rendezvous."""
    if addr is None:
        addr = _first_slurm_host(env) or env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")
    if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
        port = 20000 + int(env["SLURM_JOB_ID"]) % 20000  # distinct per job on shared nodes
    return Launch(launcher="srun", rank=int(env["SLURM_PROCID"]),
                  world_size=int(env["SLURM_NTASKS"]),
                  local_rank=int(env.get("SLURM_LOCALID", "0")), master_addr=addr,
                  master_port=port)


def _first_slurm_host(env) -> str | None:
    nodelist = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")
    if not nodelist:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                             capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out else None


def node_name() -> str:
    return socket.gethostname()


class TorchComm:
    """torch.distributed (gloo or nccl) with a heartbeat that names a rank that failed."""

    def __init__(self, launch: Launch, backend: str, timeout_s: float) -> None:
        import torch
        import torch.distributed as dist

        self.torch, self.dist, self.backend = torch, dist, backend
        self.rank, self.world_size = launch.rank, launch.world_size
        self.launcher = launch.launcher
        if backend == "nccl":
            self.device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if launch.launcher not in ("torchrun", "env"):
            os.environ.update(MASTER_ADDR=launch.master_addr, RANK=str(launch.rank),
                              MASTER_PORT=str(launch.master_port),
                              WORLD_SIZE=str(launch.world_size))
        self.timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(backend, init_method="env://", rank=launch.rank,
                                world_size=launch.world_size, timeout=self.timeout)
        self._groups: dict[tuple[int, ...], object] = {}
        self.heartbeat = Heartbeat(dist.distributed_c10d._get_default_store(), self.rank,
                                   self.world_size)

    def versions(self) -> dict:
        v = {"torch": self.torch.__version__}
        if self.backend == "nccl":
            v["nccl"] = ".".join(map(str, self.torch.cuda.nccl.version()))
            v["cuda"] = self.torch.version.cuda
            v["gpu"] = self.torch.cuda.get_device_name(self.device)
        return v

    def group(self, ranks: tuple[int, ...]):
        """The process group of `ranks`; every rank must ask for every group in one order."""
        if ranks not in self._groups:
            self._groups[ranks] = self.dist.new_group(list(ranks), timeout=self.timeout)
        return self._groups[ranks]

    def barrier(self) -> None:
        if self.backend == "nccl":
            self.dist.barrier(device_ids=[self.device.index])
        else:
            self.dist.barrier()

    def sync(self) -> None:
        if self.backend == "nccl":
            self.torch.cuda.synchronize(self.device)

    def reduce_array(self, values: np.ndarray, op: str) -> np.ndarray:
        """Element-wise max or sum of a float64 vector over all ranks."""
        t = self.torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        t = t.to(self.device)
        red = self.dist.ReduceOp.MAX if op == "max" else self.dist.ReduceOp.SUM
        self.dist.all_reduce(t, op=red)
        return t.cpu().numpy()

    def gather_objects(self, obj) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        self.heartbeat.stop()
        self.dist.destroy_process_group()


# MPICH picks its collective algorithms by size and process layout; a fit must know which
# ran, so the suite pins the long-message algorithms of Thakur, Rabenseifner & Gropp 2005
# (IJHPCA 19(1)) unless the user set them: ring all-reduce and all-gather, pairwise
# all-to-all and reduce-scatter, scatter + ring all-gather broadcast, and no device-level
# (node-aware) compositions. `cost_models.comm` models exactly these (library "mpi").
# Recorded in the results header. Other MPIs ignore these variables.
MPICH_ALGORITHMS = {
    "MPIR_CVAR_DEVICE_COLLECTIVES": "none",
    "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "ring",
    "MPIR_CVAR_ALLGATHER_INTRA_ALGORITHM": "ring",
    "MPIR_CVAR_ALLTOALL_INTRA_ALGORITHM": "pairwise",
    "MPIR_CVAR_REDUCE_SCATTER_BLOCK_INTRA_ALGORITHM": "pairwise",
    "MPIR_CVAR_BCAST_INTRA_ALGORITHM": "scatter_ring_allgather",
}


class MpiComm:
    """mpi4py: groups are communicators split from COMM_WORLD."""

    backend = "mpi"
    device = None

    def __init__(self) -> None:
        for name, value in MPICH_ALGORITHMS.items():  # read by MPI_Init, at the import
            os.environ.setdefault(name, value)
        from mpi4py import MPI

        self.MPI = MPI
        self.launcher = detect_launch().launcher  # mpiexec (PMI/PMIx/Open MPI variables)
        self.world = MPI.COMM_WORLD
        self.rank, self.world_size = self.world.Get_rank(), self.world.Get_size()
        self._groups: dict[tuple[int, ...], object] = {}
        self.heartbeat = None

    def versions(self) -> dict:
        import mpi4py

        return {"mpi4py": mpi4py.__version__,
                "mpi": self.MPI.Get_library_version().strip().splitlines()[0]}

    def split(self, groups: list[tuple[int, ...]]):
        """The communicator of this rank's group among `groups` (one collective call)."""
        key = tuple(groups)
        if key not in self._groups:
            color = next(i for i, g in enumerate(groups) if self.rank in g)
            order = groups[color].index(self.rank)
            self._groups[key] = self.world.Split(color, order)
        return self._groups[key]

    def barrier(self) -> None:
        self.world.Barrier()

    def sync(self) -> None:
        pass

    def reduce_array(self, values: np.ndarray, op: str) -> np.ndarray:
        out = np.empty_like(values, dtype=np.float64)
        red = self.MPI.MAX if op == "max" else self.MPI.SUM
        self.world.Allreduce(np.ascontiguousarray(values, dtype=np.float64), out, op=red)
        return out

    def gather_objects(self, obj) -> list:
        return self.world.allgather(obj)

    def broadcast_object(self, obj):
        return self.world.bcast(obj, root=0)

    def close(self) -> None:
        pass


class BackendUnavailable(Exception):
    """The backend asked for cannot run here; the message says what to use instead."""


def check_backend(backend: str) -> None:
    """Refuse, in one line, a backend whose library or devices are missing here."""
    if backend == "mpi":
        try:
            import mpi4py  # noqa: F401  (MPI itself starts in MpiComm)
        except ImportError:
            raise BackendUnavailable("--backend mpi needs mpi4py and an MPI library (pip "
                                     "install '.[bench]'); or use --backend gloo") from None
        return
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(f"--backend {backend} needs torch (pip install '.[bench]'); "
                                 "or use --backend mpi") from None
    if backend == "nccl" and torch.cuda.device_count() == 0:
        raise BackendUnavailable("--backend nccl needs CUDA GPUs and none is visible here; use "
                                 "--backend gloo or mpi on CPUs")


def connect(backend: str, timeout_s: float):
    """Join the job: returns a TorchComm or MpiComm for this rank."""
    check_backend(backend)
    if backend == "mpi":
        return MpiComm()
    return TorchComm(detect_launch(), backend, timeout_s)


class Heartbeat:
    """Each rank bumps a counter in the rendezvous store every `period_s` from a thread and
    records the sweep step it reached. When a collective fails, a surviving rank reads both:
    a counter that stopped means the rank died; a live rank behind the others hangs."""

    def __init__(self, store, rank: int, world_size: int, period_s: float = 0.5) -> None:
        self.store, self.rank, self.world_size, self.period_s = store, rank, world_size, period_s
        self._stop = threading.Event()
        self.store.set(f"bench/step/{rank}", "0")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        count = 0
        while not self._stop.is_set():
            count += 1
            try:
                self.store.set(f"bench/hb/{self.rank}", str(count))
            except Exception:  # the store went away: the run is ending
                return
            self._stop.wait(self.period_s)

    def step(self, index: int) -> None:
        self.store.set(f"bench/step/{self.rank}", str(index))

    def report_failure(self) -> None:
        """Say this rank saw the failure and is alive: its heartbeat may stop soon after
        (it exits once it has reported), which must not read as its death."""
        try:
            self.store.set(f"bench/failed/{self.rank}", "1")
        except Exception:  # the store went away: diagnose() says so
            pass

    def _read(self, prefix: str) -> list[int | None]:
        keys = [f"bench/{prefix}/{r}" for r in range(self.world_size)]
        return [int(self.store.get(k)) if self.store.check([k]) else None for k in keys]

    def diagnose(self) -> str:
        """One phrase naming the ranks that died or hang (the store must still be up)."""
        try:
            before = self._read("hb")
            time.sleep(4 * self.period_s + 0.5)
            after, steps = self._read("hb"), self._read("step")
            reported = self._read("failed")
        except Exception:
            return "rank 0 (which hosts the rendezvous store) died or is unreachable"
        dead = [r for r in range(self.world_size)
                if r != self.rank and not reported[r]
                and (after[r] is None or after[r] == before[r])]
        if dead:
            return f"rank {', '.join(map(str, dead))} died (its heartbeat stopped)"
        top = max(s or 0 for s in steps)
        stuck = [r for r, s in enumerate(steps) if (s or 0) < top]
        if stuck:
            return f"rank {', '.join(map(str, stuck))} hangs (alive but stuck before step {top})"
        return "no rank is dead or behind"

    def stop(self) -> None:
        """Stop beating and wait for the thread: one caught between a store call and the
        interpreter's exit aborts the process (C++ terminate) after its last line."""
        self._stop.set()
        self._thread.join(timeout=4 * self.period_s + 1.0)
