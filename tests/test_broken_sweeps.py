"""A catalogue of broken sweep files, each refused with one line before any trial starts.

Every file in ``tests/broken_sweeps/`` holds one realistic mistake, and ``# expect:`` lines
saying what its message must contain: the field, and what is accepted there. The command line
must answer each with exit status 2 and a single ``error: <file>: ...`` line on stderr, with no
traceback, whether asked to ``validate`` the file or to ``run`` it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli.main import main

CORPUS = Path(__file__).parent / "broken_sweeps"
BROKEN_FILES = sorted(CORPUS.glob("*.yaml"))


def expected_words(path: Path) -> list[str]:
    """The substrings a file's message must contain, from its ``# expect:`` lines."""
    return [
        line.removeprefix("# expect:").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]


def the_one_error_line(stderr: str, path: Path) -> str:
    """The message after ``error: <file>: ``; fails unless stderr is exactly that one line."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    prefix = f"error: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0].removeprefix(prefix)


def test_the_catalogue_holds_at_least_25_broken_files():
    assert len(BROKEN_FILES) >= 25


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda path: path.stem)
def test_validate_answers_one_line_naming_the_file_the_field_and_the_fix(
    path, capsys, monkeypatch, tmp_path
):
    words = expected_words(path)
    assert words, f"{path.name} has no '# expect:' line saying what its message must contain"
    monkeypatch.chdir(tmp_path)

    status = main(["validate", str(path)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    message = the_one_error_line(captured.err, path)
    for word in words:
        assert word in message
    # Nothing is written where the command was started: no store, no trace of a file's code.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda path: path.stem)
def test_run_refuses_before_ray_or_mlflow_start(path, capsys, monkeypatch, tmp_path):
    import ray

    ray_was_running = ray.is_initialized()  # A shared Ray session of other tests, maybe.
    monkeypatch.chdir(tmp_path)

    status = main(["run", str(path)])

    assert status == 2
    message = the_one_error_line(capsys.readouterr().err, path)
    assert all(word in message for word in expected_words(path))
    assert ray.is_initialized() == ray_was_running
    # The default MLflow store, sqlite:///mlflow.db, would appear here had tracking started.
    assert list(tmp_path.iterdir()) == []


def test_a_python_tag_is_refused_and_its_command_never_runs(capsys, monkeypatch, tmp_path):
    path = CORPUS / "yaml_python_tag.yaml"
    assert "!!python/object/apply:os.system" in path.read_text()
    monkeypatch.chdir(tmp_path)

    status = main(["validate", str(path)])

    assert status == 2
    assert "not accepted" in the_one_error_line(capsys.readouterr().err, path)
    assert not (tmp_path / "sweep_file_code_ran").exists()
