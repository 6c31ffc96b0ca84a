"""Engines start, run SPMD functions in rank order, and never outlive a run, even a failed one."""

import os

import psutil
import pytest

from ipcbench.cluster import Cluster, ClusterError, RankError


def rank_times(comm, x):
    return comm.rank * x, comm.size


def fail_on_rank_1_while_rank_0_waits(comm):
    if comm.rank == 1:
        raise ValueError("deliberate failure on rank 1")
    comm.Barrier()  # rank 0 is stuck here: an MPI collective cannot be interrupted
    return "unreachable"


def fail_everywhere(comm):
    raise KeyError(f"rank {comm.rank}")


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append((pid, " ".join(p.cmdline())))
        except psutil.NoSuchProcess:
            pass
    return alive


def _strays():
    """Return engine/controller/mpiexec processes that are children of this test process."""
    names = ("ipyparallel", "mpiexec", "hydra_pmi_proxy")
    return [p for p in psutil.Process().children(recursive=True) if any(n in " ".join(p.cmdline()) for n in names)]


def test_run_in_rank_order_and_teardown():
    with Cluster() as c:
        assert c.size == len(os.sched_getaffinity(0))
        assert [r["rank"] for r in c.ranks] == list(range(c.size))
        out = c.run(rank_times, 3)
        assert out == [(r * 3, c.size) for r in range(c.size)]
        assert not c.oversubscribed
        desc = c.describe()
        assert desc["engines"] == c.size and desc["pinned"][0] == [sorted(os.sched_getaffinity(0))[0]]
        pids = c.pids()
        assert len(pids) >= 3  # controller, mpiexec, engines
    assert _alive(pids) == []
    assert _strays() == []


def _mpich_segments() -> set[str]:
    import glob

    from ipcbench.cluster import MPICH_SHM_GLOB

    return set(glob.glob(MPICH_SHM_GLOB))


@pytest.fixture
def no_leaked_mpich_segments():
    """The test may kill ranks on purpose: whatever killed them also removes their MPICH segments from /dev/shm."""
    before = _mpich_segments()
    yield
    assert _mpich_segments() - before == set(), "killed ranks left MPICH shared-memory segments in /dev/shm"


def test_failure_inside_engines_leaves_nothing_behind(no_leaked_mpich_segments):
    with pytest.raises(RankError) as info:
        with Cluster() as c:
            first_pids = c.pids()
            with pytest.raises(RankError) as stuck:
                c.run(fail_on_rank_1_while_rank_0_waits)
            # the stuck rank was killed and the engines restarted: the cluster works again
            assert stuck.value.ranks == [1] and "deliberate failure" in str(stuck.value)
            assert "left waiting" in str(stuck.value) and "ValueError" in stuck.value.remote[0]
            assert not first_pids & c.pids(), "the engines were restarted"
            assert c.run(rank_times, 1)[1] == (1, c.size)
            all_pids = first_pids | c.pids()
            c.run(fail_everywhere)
    assert info.value.ranks == list(range(2))
    assert "KeyError" in str(info.value)
    assert _alive(all_pids) == []
    assert _strays() == []


def test_keyboard_interrupt_tears_down(no_leaked_mpich_segments):
    with pytest.raises(KeyboardInterrupt):
        with Cluster() as c:
            pids = c.pids()
            raise KeyboardInterrupt
    assert _alive(pids) == []
    assert _strays() == []


def test_run_outside_context_is_a_clear_error():
    with pytest.raises(ClusterError, match="inside `with Cluster"):
        Cluster().run(rank_times, 1)


def test_unknown_external_profile_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    with pytest.raises(ClusterError, match="ipcluster start --profile=nosuch"):
        with Cluster(profile="nosuch", start_timeout_s=5):
            pass


def test_hosts_oversubscription_and_one_host_requirement_follow_the_engines():
    """What the engines report decides: ranks per host against each host's cores, and one host for local transports."""
    c = Cluster(profile="elsewhere")  # an external profile: never started here
    c.ranks = [{"rank": 0, "host": "a", "host_cores": 2}, {"rank": 1, "host": "a", "host_cores": 2},
               {"rank": 2, "host": "b", "host_cores": 1}, {"rank": 3, "host": "b", "host_cores": 1}]  # fmt: skip
    assert not c.single_host and c.oversubscribed  # host b runs 2 ranks on 1 core
    assert c.describe()["ranks_and_cores_per_host"] == {"a": {"ranks": 2, "cores": 2}, "b": {"ranks": 2, "cores": 1}}
    with pytest.raises(ClusterError, match=r"needs every engine on one host \(shared memory\).*a, b"):
        c.require_one_host("shared memory")
    c.ranks = c.ranks[:2]
    assert c.single_host and not c.oversubscribed
    c.require_one_host("shared memory")


def test_hosts_that_share_a_machine_share_its_cores():
    """Emulated hosts (network namespaces) or containers on one machine: four one-rank hosts on two cores are
    oversubscribed, although no host runs more ranks than it has cores."""
    c = Cluster(profile="elsewhere")
    c.ranks = [{"rank": i, "host": f"h{i}", "host_cores": 2, "machine": "boot-1"} for i in range(4)]
    assert not c.single_host
    assert c.oversubscribed and c.oversubscribed_at(3)
    assert not c.oversubscribed_at(2)
    c.ranks = [{**r, "machine": f"boot-{r['rank']}"} for r in c.ranks]  # four real machines
    assert not c.oversubscribed


def pid_of(comm):
    return os.getpid()


def test_fresh_engines_are_new_processes_and_the_old_ones_are_gone(no_leaked_mpich_segments):
    with Cluster() as c:
        old = c.run(pid_of)
        old_pids = c.pids()
        c.fresh_engines()
        new = c.run(pid_of)
        assert not set(old) & set(new) and len(new) == len(old) == c.size
        assert [r["rank"] for r in c.ranks] == list(range(c.size))
        assert _alive(set(old)) == []  # the replaced engines exited
        assert c.run(rank_times, 2) == [(r * 2, c.size) for r in range(c.size)]
        pids = c.pids() | old_pids
    assert _alive(pids) == []
    assert _strays() == []
