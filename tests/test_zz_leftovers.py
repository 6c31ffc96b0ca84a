"""Runs last (file order): the whole suite left no process, file, segment or namespace behind."""

import glob
import os

from conftest import HYDRA_AT_START, LEFTOVERS_AT_START


def test_the_suite_left_no_hydra_file_behind():
    from ipcbench import lifecycle

    assert set(glob.glob(lifecycle.HYDRA_GLOB)) - HYDRA_AT_START == set()


def test_the_suite_left_no_segment_socket_lmdb_or_fifo_directory_behind():
    from ipcbench import backends

    new = {k: sorted(set(v) - set(LEFTOVERS_AT_START.get(k, []))) for k, v in backends.leftovers().items()}
    assert not any(new.values()), new


def test_the_suite_left_no_cluster_process_running():
    from ipcbench import lifecycle

    mine = os.environ.get(lifecycle.OWNER_ENV)
    left = [p for p in lifecycle._processes() if lifecycle._is_cluster(p) and p["owner"] == mine and mine]
    assert left == [], left
