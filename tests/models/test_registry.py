"""models/registry.py and `tidewater models list|use`: versions, the current pointer, rollback."""
from __future__ import annotations

import json

import pytest

from models.registry import Registry, describe, resolve_version, serving_index
from tidewater.cli import main


def publish(root, kind: str, fingerprint: str, **meta) -> str:
    return Registry(root / kind).publish(lambda d: (d / "weights.bin").write_bytes(b"w"), fingerprint=fingerprint,
                                         meta=meta)


def run(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.fixture()
def registry(tmp_path):
    first = publish(tmp_path, "churn", "aaaaaaaa11", dataset="cdnow_master", test_auc=0.77)
    second = publish(tmp_path, "churn", "bbbbbbbb22", dataset="cdnow_master", test_auc=0.78)
    recs = publish(tmp_path, "recs", "cccccccc33", dataset="ml-100k")
    return tmp_path, first, second, recs


def test_versions_resolve_in_full_or_by_number(registry):
    root, first, second, _ = registry
    reg = Registry(root / "churn")
    assert [resolve_version(reg, name) for name in (first, "v0001", "1", "v2", "0002")] == [first, first, first,
                                                                                             second, second]
    with pytest.raises(LookupError, match="published: v0001-aaaaaaaa, v0002-bbbbbbbb"):
        resolve_version(reg, "3")


def test_describe_lists_every_version_with_the_current_one_marked(registry):
    root, first, second, recs = registry
    (root / "churn" / first / "meta.json").write_text("{not json")
    found = describe(root)
    assert [(r["version"], r["current"]) for r in found["churn"]] == [(first, False), (second, True)]
    assert "unreadable" in found["churn"][0]["error"]
    assert found["churn"][1]["test_auc"] == 0.78 and found["churn"][1]["dataset"] == "cdnow_master"
    assert [r["version"] for r in found["recs"]] == [recs] and found["recs_index"] == []


def test_models_use_rolls_back_and_list_shows_it(registry, capsys):
    root, first, second, _ = registry
    code, out, _ = run(["models", "use", "churn", "v0001", "--registry", str(root)], capsys)
    assert code == 0 and f"current {second} -> {first}" in out
    assert Registry(root / "churn").current_version() == first
    code, out, _ = run(["models", "list", "--registry", str(root), "--json"], capsys)
    listed = json.loads(out.strip().splitlines()[-1])
    assert [r["version"] for r in listed["churn"] if r["current"]] == [first]
    code, out, _ = run(["models", "list", "--registry", str(root)], capsys)
    assert f"* {first}" in out and f"  {second}" in out and "recs_index" in out and "nothing published" in out


@pytest.mark.parametrize("args, message", [
    (["models", "use", "weights", "1"], "unknown kind 'weights'"),
    (["models", "use", "churn", "9"], "no version '9'"),
    (["models", "use", "recs_index", "1"], "published: none"),
    (["models", "use", "churn", "\u00b2"], "no version '\u00b2'"),  # isdigit() but not int(): a ValueError before
])
def test_models_use_refuses_what_is_not_there_with_a_clear_error(registry, capsys, args, message):
    root, _, second, _ = registry
    code, _, err = run(args + ["--registry", str(root)], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert Registry(root / "churn").current_version() == second  # unchanged


def test_regression_a_registry_that_cannot_be_used_is_a_clear_error(registry, tmp_path, capsys):
    """A registry path that is a file ended `models list` in a NotADirectoryError traceback, and a registry whose
    lock cannot be opened (no write permission) ended `models use` in a PermissionError one (found by review)."""
    afile = tmp_path / "afile"
    afile.write_text("not a registry")
    code, _, err = run(["models", "list", "--registry", str(afile)], capsys)
    assert code == 2 and "cannot use the registry at" in err and "Traceback" not in err
    root, first, second, _ = registry
    (root / "churn" / ".publish.lock").unlink()
    (root / "churn" / ".publish.lock").mkdir()  # cannot be opened for writing, as without permission
    code, _, err = run(["models", "use", "churn", first, "--registry", str(root)], capsys)
    assert code == 2 and "cannot use the registry at" in err and "Traceback" not in err
    assert Registry(root / "churn").current_version() == second  # unchanged


def test_an_index_built_for_another_recs_model_is_pointed_out(registry, capsys):
    root, _, _, recs = registry
    older = publish(root, "recs_index", "dddddddd44", model_version="v0000-old")
    code, _, err = run(["models", "use", "recs_index", older, "--registry", str(root)], capsys)
    assert code == 0 and f"built for recs model v0000-old, the current recs model is {recs}" in err
    matching = publish(root, "recs_index", "eeeeeeee55", model_version=recs)
    code, _, err = run(["models", "use", "recs_index", matching, "--registry", str(root)], capsys)
    assert code == 0 and "built for" not in err


def test_an_index_without_readable_metadata_is_reported_not_a_traceback(registry, capsys):
    root, _, _, _ = registry
    broken = publish(root, "recs_index", "ffffffff66", model_version="x")
    (root / "recs_index" / broken / "meta.json").write_text("{")
    code, _, err = run(["models", "use", "recs_index", broken, "--registry", str(root)], capsys)
    assert code == 0 and "no readable meta.json" in err and "Traceback" not in err


def test_regression_publishers_running_at_once_get_their_own_versions(tmp_path):
    """The number was picked before the (long) write, without a lock: two publishers at once both took v0001
    (found by review). One publishes while the other is writing its files."""
    import stat

    registry = Registry(tmp_path / "churn")
    inner: list[str] = []

    def write_outer(directory):
        (directory / "weights.bin").write_bytes(b"outer")
        inner.append(registry.publish(lambda d: (d / "weights.bin").write_bytes(b"inner"), fingerprint="bbbbbbbb"))

    outer = registry.publish(write_outer, fingerprint="aaaaaaaa")
    assert inner == ["v0001-bbbbbbbb"] and outer == "v0002-aaaaaaaa"
    assert registry.versions() == ["v0001-bbbbbbbb", "v0002-aaaaaaaa"] and registry.current_version() == outer
    assert (registry.path(outer) / "weights.bin").read_bytes() == b"outer"
    # readable by a worker running as another user (mkdtemp / mkstemp create 0700 / 0600)
    assert stat.S_IMODE(registry.path(outer).stat().st_mode) & 0o055 == 0o055
    assert stat.S_IMODE((registry.root / "current").stat().st_mode) & 0o044 == 0o044


def test_regression_a_deleted_versions_name_is_not_given_to_the_next_one(tmp_path):
    """The next number was one above the versions on disk: delete the newest version (a bad model), retrain on the
    same data, and the new artifact got the deleted one's name (carried in notes since the thirteenth session).
    A worker that served the deleted version did not reload, and outputs of two models carried one
    ``model_version``."""
    import shutil

    registry = Registry(tmp_path / "churn")
    first = registry.publish(lambda d: (d / "weights.bin").write_bytes(b"1"), fingerprint="aaaaaaaa")
    bad = registry.publish(lambda d: (d / "weights.bin").write_bytes(b"bad"), fingerprint="aaaaaaaa")
    registry.set_current(first)
    shutil.rmtree(registry.path(bad))
    again = registry.publish(lambda d: (d / "weights.bin").write_bytes(b"new"), fingerprint="aaaaaaaa")
    assert (first, bad, again) == ("v0001-aaaaaaaa", "v0002-aaaaaaaa", "v0003-aaaaaaaa")
    assert registry.versions() == [first, again] and registry.current_version() == again
    # a registry from before the high-water mark numbers from its versions, as it did
    (registry.root / ".last_number").unlink()
    assert registry.publish(lambda d: None, fingerprint="bbbbbbbb") == "v0004-bbbbbbbb"


def test_regression_a_rollback_to_a_version_without_serving_metadata_says_what_will_be_served(registry, capsys):
    """Rolling back to churn v0001 (published before event_types and ring_events were recorded) silently brought
    back a model reading clicks it was never trained on (found by review). The built-in CDNOW logs are
    purchases-only, so their versions are served purchases; `models use` says what is guessed."""
    from models.churn.scorer import event_types

    root, first, _, _ = registry
    code, _, err = run(["models", "use", "churn", first, "--registry", str(root)], capsys)
    assert code == 0 and "predates the serving metadata" in err and "purchase events" in err and "whole ring" in err
    assert event_types({"dataset": "cdnow_master"}) == ["purchase"]
    assert event_types({"dataset": "shop.csv"}) == ["click", "purchase"]
    assert event_types({"dataset": "shop.csv", "event_types": ["purchase"]}) == ["purchase"]
    recorded = publish(root, "churn", "gggggggg77", dataset="shop.csv", event_types=["click", "purchase"],
                       ring_events=64)
    code, _, err = run(["models", "use", "churn", recorded, "--registry", str(root)], capsys)
    assert code == 0 and "predates" not in err


def test_a_published_version_is_synced_to_disk_before_it_is_named(tmp_path, monkeypatch):
    """A power loss after publishing must not leave `current` naming a version with torn files (found by review):
    every file and directory of the version is fsynced before the rename, and the pointer before it replaces the
    old one."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def write(directory):
        (directory / "weights.bin").write_bytes(b"w")
        (directory / "index").mkdir()
        (directory / "index" / "faiss.bin").write_bytes(b"f")

    monkeypatch.setattr(os, "fsync", recording_fsync)
    version = Registry(tmp_path / "churn").publish(write, fingerprint="abcdef12")
    names = [os.path.basename(p) for p in synced]
    for name in ("weights.bin", "faiss.bin", "meta.json", "index"):
        assert name in names
    assert any(os.path.basename(p).startswith(".current-") for p in synced)  # the pointer's content
    assert synced[-1] == str(tmp_path / "churn")  # the directory holding the renamed pointer, last
    assert Registry(tmp_path / "churn").current_version() == version


def test_a_rollback_waits_for_a_publisher_that_holds_the_lock(registry, capsys):
    """`models use` took no lock, so a rollback could land between a concurrent publisher's numbering and its
    pointer update, and be silently undone (found by review). It now waits for the publisher: the rollback is
    the last word, and it reports the pointer the publisher left."""
    import threading
    import time

    root, first, second, _ = registry
    reg = Registry(root / "churn")
    held, done = threading.Event(), threading.Event()

    def publisher():
        with reg.lock():
            held.set()
            time.sleep(0.3)  # the rollback below starts meanwhile (without the lock it would finish now)
            reg.set_current(second)
        done.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    held.wait(5)
    reg.set_current(first)  # what the publisher overwrites: the rollback must come after it
    code, out, _ = run(["models", "use", "churn", first, "--registry", str(root)], capsys)
    thread.join()
    assert done.is_set() and code == 0
    assert f"current {second} -> {first}" in out and reg.current_version() == first


@pytest.mark.parametrize("args", [["evaluate", "offers"], ["index", "build"], ["models", "list"]])
def test_regression_every_registry_command_reads_the_workers_registry_setting(tmp_path, monkeypatch, capsys, args):
    """Only `models list|use` read TIDEWATER_REGISTRY_DIR; `train`, `index build` and `evaluate offers` silently
    used ./var/registry, so a runbook command acted on another registry than the workers'."""
    monkeypatch.setenv("TIDEWATER_REGISTRY_DIR", str(tmp_path / "workers-registry"))
    _, out, err = run(args, capsys)
    assert str(tmp_path / "workers-registry") in out + err


def test_regression_a_publish_numbers_its_version_under_the_registry_lock(tmp_path):
    """Only the order (number after the write) was pinned: a publish without the lock passed every test, and two
    processes could both number v0001 (found by review). While another holder has the lock, nothing is numbered."""
    import threading

    registry = Registry(tmp_path / "churn")
    registry.root.mkdir(parents=True)  # publish makes it; here the lock is taken first
    published: list[str] = []
    with registry.lock():
        thread = threading.Thread(target=lambda: published.append(
            registry.publish(lambda d: (d / "weights.bin").write_bytes(b"w"), fingerprint="cccccccc")))
        thread.start()
        thread.join(1.0)  # without the lock it finishes well within this
        assert thread.is_alive() and published == [] and registry.versions() == []
    thread.join(30)
    assert published == ["v0001-cccccccc"] and registry.current_version() == "v0001-cccccccc"


@pytest.mark.parametrize("pointer", ["/etc", "../elsewhere", "v0001-aaaaaaaa/../../elsewhere", "vlink", "v9999-gone"])
def test_regression_the_current_pointer_names_only_a_version_directory_of_the_registry(registry, pointer, capsys):
    """``current`` was joined to the registry's root as written: a pointer to ``/etc``, ``../elsewhere`` or a symlink
    out of the registry had every worker load whatever it named (found by a security review). It must name one
    of the registry's own version directories; the worker keeps serving what it has and logs why."""
    root, first, _, _ = registry
    reg = Registry(root / "churn")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (root / "churn" / "vlink").symlink_to(elsewhere, target_is_directory=True)
    assert "vlink" not in reg.versions()
    (root / "churn" / "current").write_text(pointer + "\n")
    with pytest.raises(ValueError, match="not a version directory of this registry"):
        reg.current_version()
    with pytest.raises(ValueError):
        reg.current_path()
    with pytest.raises(FileNotFoundError):
        reg.set_current(pointer)
    # `tidewater models list` still lists, and says what is wrong; `models use` repairs the pointer (the first
    # version of this check made both end in a traceback: found by the review of the change)
    code, out, err = run(["models", "list", "--registry", str(root)], capsys)
    assert code == 0 and first in out and "not a version directory" in err and "models use churn" in err
    code, out, _ = run(["models", "use", "churn", "1", "--registry", str(root)], capsys)
    assert code == 0 and f"current an invalid pointer -> {first}" in out
    assert reg.current_path() == root / "churn" / first
    # `tidewater models use` refuses the symlink by name as well
    code, _, err = run(["models", "use", "churn", "vlink", "--registry", str(root)], capsys)
    assert code != 0 and reg.current_version() == first
    # an index pointer naming no version: the recs model serves its own index, as for any unusable index
    (root / "recs_index").mkdir()
    (root / "recs_index" / "current").write_text(pointer + "\n")
    assert serving_index(Registry(root / "recs_index"), "v0001-cccccccc") is None


def test_regression_models_list_of_a_registry_that_does_not_exist_says_so(tmp_path, capsys):
    """It printed "churn (...): nothing published" for a mistyped path, or run from another directory than the
    repository (the default is relative), as if the registry were empty (found by review)."""
    code, out, err = run(["models", "list", "--registry", str(tmp_path / "no-such")], capsys)
    assert code == 2 and f"no registry at {tmp_path / 'no-such'}" in err and "nothing published" not in out
