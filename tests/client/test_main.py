"""The command line (client/__main__.py): the README's example runs as written, from another folder,
against a real server; `status` fits on one screen; every option explains itself; bad files and options are one
line naming what is wrong, files larger than a request go in parts, and Ctrl-C stops watching, not the job."""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy
import pytest

from client.__main__ import build_parser, history_table, summary
from tests.conftest import ROOT
from tests.servers import start_server, stop_server


def readme_cli_lines():
    text = (ROOT / "README.md").read_text()
    block = text.split("The command line on top of it", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_example_runs_as_written_from_another_folder(server, tmp_path):
    """Each line of the README's block, in a folder holding only a copy of examples/data (the import
    path stands for the installed package)."""
    shutil.copytree(ROOT / "examples" / "data", tmp_path / "examples" / "data")
    env = {**os.environ, "NN_URL": server, "PYTHONPATH": str(ROOT)}
    outputs = {}
    job_id = None
    lines = readme_cli_lines()
    # `nn` (the console script) and `python -m client` are one command; the import path stands for the install
    lines = [line.replace("python -m client ", "nn ", 1) for line in lines]
    assert lines[0].startswith("nn train") and "examples/data/moons.csv" in lines[0]
    for line in lines:
        command = line.replace("JOB_ID", job_id or "JOB_ID").split()
        assert command[0] == "nn", line
        done = subprocess.run([sys.executable, "-m", "client", *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs[line] = done.stdout
        if command[1] == "train":
            job_id = done.stdout.strip()
    status = outputs["nn status JOB_ID"]
    assert status.splitlines()[0] == f"job {job_id} (training) on model moons: succeeded"
    assert "epoch 50/50" in status and re.search(r"loss \d", status) and re.search(r"accuracy \d", status)
    assert "ETA" not in status and len(status.splitlines()) <= 10
    history = outputs["nn status JOB_ID --history"].splitlines()
    assert history[-51].split()[:3] == ["epoch", "loss", "accuracy"] and history[-1].split()[0] == "50"
    predictions = outputs["nn predict --model moons --data examples/data/moons-new.csv"].splitlines()
    assert len(predictions) == 8 and all(row.split(",")[-1] in ("0", "1") for row in predictions)
    assert (tmp_path / "moons.onnx").stat().st_size > 0


def test_status_of_a_running_job_shows_the_eta():
    record = {"job_id": "j1", "model_id": "m", "kind": "training", "status": "running", "params": {"epochs": 20},
              "epochs_completed": 3, "history": [{"epoch": 3, "loss": 0.25, "accuracy": 0.9, "learning_rate": 0.01}],
              "progress": {"epoch": 4, "epochs": 20, "percent": 17.5, "loss": 0.2, "eta_seconds": 75.0,
                           "learning_rate": 0.01, "samples_per_second": 1234.0}}
    text = summary(record)
    assert text.splitlines() == ["job j1 (training) on model m: running", "epoch 4/20 (18%)", "loss 0.25  accuracy 0.9",
                                 "ETA 1m15s  learning rate 0.01  1234 samples/s"]
    assert history_table(record).splitlines() == ["epoch  loss  accuracy  learning_rate", "    3  0.25       0.9           0.01"]


def test_status_of_a_running_search_shows_its_trials():
    trials = [{"index": i, "status": status} for i, status in enumerate(["succeeded", "failed", "running", "pending"])]
    record = {"job_id": "s1", "model_id": "m", "kind": "search", "status": "running", "params": {}, "epochs_completed": 0,
              "history": [], "progress": {"epoch": None, "epochs": None, "percent": 50.0, "trials_done": 2,
                                          "trials_total": 4, "trials_running": 1, "metric": "accuracy"},
              "search": {"metric": "accuracy", "trials_total": 4, "trials_done": 2, "trials": trials,
                         "best": {"index": 0, "score": 0.95, "params": {"hidden_sizes": [8]}}}}
    assert summary(record).splitlines() == ["job s1 (search) on model m: running", "trials 2/4 ran, 1 running",
                                            "ETA unknown", 'best trial 0: accuracy 0.95 with {"hidden_sizes": [8]}']


def test_every_option_has_help_text():
    def check(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    check(sub, f"{where} {name}")
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{where}: {action.option_strings or action.dest} has no help text"
    check(build_parser(), "python -m client")


def test_predict_into_a_closed_pipe_stops_quietly(server, tmp_path):
    """`nn predict ... | head -1`: the reader closes the pipe early; no `error: [Errno 32] Broken pipe`
    and no traceback on stderr."""
    from client import Client
    with Client(server) as api:
        api.create_model([2, 4, 1], activations=["relu", "sigmoid"], model_id="pipe", seed=0)
    data = tmp_path / "x.csv"
    data.write_text("\n".join(f"{i},{-i}" for i in range(2000)) + "\n")
    env = {**os.environ, "NN_URL": server, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "client", "predict", "--model", "pipe", "--data", str(data)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the client has written anything: it is still importing
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 1
    assert stderr == ""


def test_an_unreachable_service_or_a_url_without_scheme_is_one_line_and_status_1(capsys):
    """Both printed a ~50-line httpx traceback (ConnectError, UnsupportedProtocol)."""
    import socket

    from client.__main__ import main

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url, expected in ((f"http://127.0.0.1:{port}", f"error: cannot reach http://127.0.0.1:{port} (connection refused); "
                                                       "is the service running? (--url / NN_URL)"),
                          ("127.0.0.1:8900", "error: --url '127.0.0.1:8900' has no http:// or https://; "
                                             "give it as http://127.0.0.1:8900 (--url / NN_URL)")):
        assert main(["--url", url, "whoami"]) == 1
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", expected + "\n"), url


@pytest.mark.parametrize("content, words", [
    ("", "holds no rows of numbers"),  # an IndexError traceback
    ("1,2\n3\n", "line 2: 1 values where line 1 has 2"),  # numpy's "inhomogeneous shape" message
    ("1,2\n3,x\n", "line 2, column 2: 'x' is not a number"),
    ("1,2\n3,nan\n", "line 2, column 2 is nan: send finite numbers"),  # "Out of range float values are not JSON compliant"
])
def test_a_csv_that_is_not_rows_of_numbers_is_named_with_its_line_and_column(tmp_path, capsys, content, words):
    from client.__main__ import main

    (tmp_path / "x.csv").write_text(content)
    assert main(["--url", "http://127.0.0.1:9", "predict", "--model", "m", "--data", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err


def test_other_files_and_options_get_a_message_that_says_what_to_give(tmp_path, capsys):
    from client.__main__ import main

    numpy.save(tmp_path / "a.npy", numpy.ones((2, 2)))
    (tmp_path / "not.npz").write_bytes(b"x,y\n1,2\n")
    (tmp_path / "damaged.npz").write_bytes(b"PK\x03\x04garbage")  # BadZipFile: a traceback and exit 1
    numpy.savez(tmp_path / "other.npz", features=numpy.ones((2, 2)))
    (tmp_path / "two.csv").write_text("1,2\n3,4\n")
    for argv, words in ((["predict", "--data", str(tmp_path / "a.npy")], "is one .npy array"),
                        (["predict", "--data", str(tmp_path / "not.npz")], "is not an .npz (zip) file"),  # "pickled data"
                        (["predict", "--data", str(tmp_path / "other.npz")], "has no array 'inputs'"),
                        (["predict", "--data", str(tmp_path / "damaged.npz")], "is not an .npz file numpy reads"),
                        (["train", "--data", str(tmp_path / "two.csv"), "--targets", "2"], "--targets 2: ")):
        assert main(["--url", "http://127.0.0.1:9", *argv, "--model", "m"]) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (argv, err)


def test_more_rows_than_a_request_takes_are_sent_in_parts_and_trained_from_a_dataset(tmp_path):
    """A 20,000-row file was a 413 'send them in several requests', which the command line could not do."""
    url, process = start_server(tmp_path / "data", NN_MAX_SAMPLES_PER_REQUEST="50")
    try:
        data = tmp_path / "x.csv"
        data.write_text("".join(f"{i / 100},{-i / 100},{i % 2}\n" for i in range(120)))
        env = {**os.environ, "NN_URL": url, "PYTHONPATH": str(ROOT)}

        def nn(*args):
            return subprocess.run([sys.executable, "-m", "client", *args], env=env, capture_output=True, text=True,
                                  timeout=120)

        trained = nn("train", "--model", "big", "--data", str(data), "--create", "2,4,1", "--activations", "tanh,sigmoid",
                     "--epochs", "2", "--watch")
        assert trained.returncode == 0, trained.stderr
        assert "120 samples are more than one request takes: uploaded as dataset" in trained.stderr
        (tmp_path / "new.csv").write_text("".join(f"{i / 100},{-i / 100}\n" for i in range(120)))
        predicted = nn("predict", "--model", "big", "--data", str(tmp_path / "new.csv"))
        assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 120, predicted.stderr
    finally:
        stop_server(process)


def test_ctrl_c_while_watching_stops_watching_with_a_line_not_a_traceback(server, tmp_path):
    from client import Client

    with Client(server) as api:
        api.create_model([2, 1], model_id="watched")
        job = api.train("watched", min_samples=1000)  # buffering: the watch would last forever
    env = {**os.environ, "NN_URL": server, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "client", "status", job.job_id, "--watch"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    drawn = process.stderr.read(1)  # the bar's first character: the stream is being followed
    process.send_signal(signal.SIGINT)
    stderr = drawn + process.stderr.read()
    assert process.wait(timeout=60) == 130
    assert f"stopped watching; job {job.job_id} goes on" in stderr and "Traceback" not in stderr, stderr
    assert f"`nn cancel {job.job_id}` stops it" in stderr and "POST" not in stderr, stderr  # a command, not a route


def nn_main(capsys, server, *argv):
    """`nn ARGV` in this process: (exit status, stdout, stderr)."""
    from client.__main__ import main

    code = main(["--url", server, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_without_create_on_a_missing_model_says_to_add_create_with_sizes_that_fit_the_file(server, tmp_path, capsys):
    """It said 'create it with POST /models', the API's hint, which the command line has no use for."""
    code, out, err = nn_main(capsys, server, "train", "--model", "absent", "--data", str(ROOT / "examples/data/moons.csv"))
    assert (code, out) == (2, "")
    assert err == ("error: HTTP 404: model 'absent' does not exist; to create it, add --create 2,16,1 (layer sizes: this file's "
                   "2 inputs, a hidden layer of 16, 1 output)\n")
    (tmp_path / "three.csv").write_text("0,0,0\n1,1,1\n2,2,2\n0,1,0\n")  # --labels with 3 classes: one output each
    code, out, err = nn_main(capsys, server, "train", "--model", "absent", "--data", str(tmp_path / "three.csv"), "--labels")
    assert code == 2 and "add --create 2,16,3 (layer sizes: this file's 2 inputs, a hidden layer of 16, 3 outputs)" in err


def test_create_on_an_existing_model_says_to_leave_out_create(server, capsys):
    """Re-running the README's `train ... --create` said 'DELETE /models/moons first'."""
    argv = ("train", "--model", "again", "--data", str(ROOT / "examples/data/moons.csv"), "--create", "2,4,1",
            "--epochs", "1", "--watch")
    assert nn_main(capsys, server, *argv)[0] == 0
    code, out, err = nn_main(capsys, server, *argv)
    assert (code, out) == (2, "")
    assert err == ("error: HTTP 409: model 'again' already exists; leave out --create (and --activations, --seed) to train it "
                   "further, or choose another --model\n")
    assert nn_main(capsys, server, *[a for a in argv if a not in ("--create", "2,4,1")])[0] == 0  # as it says


def test_an_unknown_job_or_model_points_to_the_commands_that_list_or_make_them(server, capsys):
    """`status nope` said 'list jobs with GET /jobs'; predict and export on a missing model 'POST /models'."""
    for argv in (("status", "nope"), ("status", "nope", "--watch"), ("cancel", "nope")):
        assert nn_main(capsys, server, *argv) == (2, "", "error: HTTP 404: job 'nope' does not exist; `nn jobs` lists the jobs, "
                                                         "newest first (--model M for one model's)\n"), argv
    for argv in (("predict", "--model", "nope", "--data", str(ROOT / "examples/data/moons-new.csv")),
                 ("export", "--model", "nope", "--out", os.devnull)):
        assert nn_main(capsys, server, *argv) == (2, "", "error: HTTP 404: model 'nope' does not exist; `nn train --model nope "
                                                         "--data FILE --create SIZES` creates and trains it\n"), argv


def test_cancel_a_waiting_job_a_running_one_and_one_that_ended(server, capsys):
    """`nn cancel` did not exist: the Ctrl-C line sent users to POST /jobs/<id>/cancel."""
    import time

    from client import Client

    with Client(server) as api:
        api.create_model([2, 1], model_id="cancelled", seed=0)
        waiting = api.train("cancelled", min_samples=1000)  # buffering: waits for samples that never come
        # hours of one-sample batches (NN_MAX_EPOCHS caps epochs): still running when cancelled
        running = api.train("cancelled", inputs=numpy.zeros((2000, 2)), targets=numpy.zeros(2000), epochs=10_000,
                            batch_size=1)
        deadline = time.monotonic() + 60
        while running.refresh()["status"] != "running":
            assert time.monotonic() < deadline, running.record["status"]
            time.sleep(0.05)
        assert nn_main(capsys, server, "cancel", waiting.job_id) == (0, f"job {waiting.job_id} cancelled\n", "")
        code, out, err = nn_main(capsys, server, "cancel", running.job_id)
        assert (code, err) == (0, "") and out == (f"job {running.job_id} cancelling: it stops within one batch "
                                                  f"(`nn status {running.job_id} --watch` follows it to the end)\n")
        assert running.wait(timeout=60)["status"] == "cancelled"
        assert nn_main(capsys, server, "cancel", running.job_id) == (
            1, "", f"job {running.job_id} already ended (cancelled): nothing to cancel\n")


def test_jobs_lists_one_line_per_job_newest_first_with_filters(server, capsys):
    from client import Client

    with Client(server) as api:
        api.create_model([2, 1], model_id="listed", seed=0)
        x, y = numpy.zeros((4, 2)), numpy.zeros(4)
        first = api.train("listed", inputs=x, targets=y, epochs=2)
        first.wait(timeout=60)
        waiting = api.train("listed", min_samples=1000, epochs=7)
        search = api.search("listed", {"learning_rate": [0.1, 0.01]}, inputs=numpy.zeros((8, 2)), targets=numpy.zeros(8),
                            folds=2, epochs=1)
        search.wait(timeout=60)
    try:
        code, out, err = nn_main(capsys, server, "jobs", "--model", "listed")
        assert (code, err) == (0, "")
        rows = [line.split("  ") for line in out.splitlines()]
        rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
        assert rows[0] == ["JOB", "MODEL", "KIND", "STATUS", "PROGRESS", "CREATED"]
        assert [row[:5] for row in rows[1:]] == [[search.job_id, "listed", "search", "succeeded", "trials 2/2"],
                                                 [waiting.job_id, "listed", "training", "buffering", "epoch 0/7"],
                                                 [first.job_id, "listed", "training", "succeeded", "epoch 2/2"]]
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row[5]) for row in rows[1:])
        code, out, err = nn_main(capsys, server, "jobs", "--model", "listed", "--kind", "training", "--status", "succeeded")
        assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == [first.job_id]
        code, out, err = nn_main(capsys, server, "jobs", "--model", "listed", "--limit", "1")
        assert [line.split()[0] for line in out.splitlines()[1:]] == [search.job_id]
        assert err == "1 of 3 jobs, newest first: --limit 3 lists them all\n"
        assert nn_main(capsys, server, "jobs", "--model", "listed", "--status", "running") == (
            0, "", "no jobs match --model listed --status running\n")
    finally:
        with Client(server) as api:
            api.job(waiting.job_id).cancel()


def test_jobs_follows_next_offset_when_a_page_holds_fewer_than_its_limit(tmp_path, capsys):
    """NN_MAX_LIST_BYTES cuts a page of long histories short; the listing goes on from next_offset."""
    from client import Client

    url, process = start_server(tmp_path / "data", NN_MAX_LIST_BYTES=str(64 * 1024))
    try:
        with Client(url) as api:
            api.create_model([2, 1], model_id="long", seed=0)
            jobs = [api.train("long", inputs=numpy.zeros((4, 2)), targets=numpy.zeros(4), epochs=500, batch_size=4)
                    for _ in range(3)]
            for job in jobs:
                job.wait(timeout=120)
            assert api._json("GET", "/jobs", params={"limit": 3})["next_offset"] is not None  # a short page
        code, out, err = nn_main(capsys, url, "jobs")
        assert (code, err) == (0, "")
        assert [line.split()[0] for line in out.splitlines()[1:]] == [job.job_id for job in reversed(jobs)]
    finally:
        stop_server(process)


@pytest.mark.parametrize("argv, words", [
    (["predict"], "is one .npy array; give a CSV of inputs (one sample per row), or an .npz holding x "
                  "(numpy.savez(path, x=...))"),  # was 'give a CSV (inputs, then targets)' to a command that takes none
    (["train"], "is one .npy array; give a CSV (inputs, then targets), or an .npz holding x and y "
               "(numpy.savez(path, x=..., y=...))"),
])
def test_a_npy_file_gets_a_message_that_fits_the_command(tmp_path, capsys, argv, words):
    from client.__main__ import main

    numpy.save(tmp_path / "one.npy", numpy.ones((2, 2)))
    assert main(["--url", "http://127.0.0.1:9", *argv, "--model", "m", "--data", str(tmp_path / "one.npy")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'one.npy'} {words}\n"


def test_predict_files_are_described_as_inputs_only(tmp_path, capsys):
    from client.__main__ import main

    numpy.savez(tmp_path / "other.npz", features=numpy.ones((2, 2)))
    (tmp_path / "empty.csv").write_text("a,b\n")
    (tmp_path / "latin.csv").write_bytes(b"\xe9,1\n")
    for name, words in (("other.npz", "has no array 'inputs' (x, or inputs); it holds: features"),
                        ("empty.csv", "holds no rows of numbers; give one sample per line, its inputs"),
                        ("latin.csv", "is not UTF-8 text: give a CSV of inputs (one sample per row), or an .npz holding x")):
        assert main(["--url", "http://127.0.0.1:9", "predict", "--model", "m", "--data", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert words in err and "targets" not in err and " y" not in err, err
