"""A hostile user's sweep of the command line (issue 26): does any command lose a file, give a
silently wrong result, end in a raw traceback or leave temporary files behind?

    python tests/hostile_sweep.py --repo . --out /tmp/sweep [--only SUBSTRING] [--list]

Runs `python REPO/run.py ...` as subprocesses (cwd: a scratch directory, so REPO's own gptjax is
the one imported; JAX_PLATFORMS=cpu; offline), never importing gptjax itself (stdlib + numpy).

Fixtures (OUT/fixtures, built once and reused while their manifest names the same --repo and
FIXTURE_VERSION; delete the folder to rebuild): a tiny
trained token-classification run and its export, a tiny trained causal_lm run and its export,
labelled CoNLL data, a plain-text file and a prompts file, and each model's baseline eval metrics.

Each case copies what it needs into OUT/cases/NAME, snapshots the protected trees (relative path
-> sha256, plus the set of directories), runs its commands and ends in exactly one class, the
first that applies of:

  lost       a protected file changed, vanished or was replaced where the case does not mean to
             change it (the paths are named);
  wrong      a command exited 0 where a refusal was expected, or gave a result other than the
             baseline (a follow-up eval after a refused command, an eval of tampered files), or
             failed where it must succeed (the controls, a valid odd path), or timed out;
  traceback  "Traceback (most recent call last)" in stderr, a crash by a signal, or a non-zero
             exit with a multi-line dump (Orbax, JAX, absl) before the error line;
  leftover   temporary files (.tmp-, .old-, .write-test-, orbax-checkpoint-tmp) left behind, a new
             workdir left empty or holding only .lock, or new files written into a protected tree;
  ok         handled well: refused in one line with nothing lost, or did the right thing.

Prints a table and the counts per class; writes OUT/results.json (with --only:
OUT/results-only-SUBSTRING.json) with every command, its exit code, the tail of its stderr, its
error line and the reason for each class. A case that raises inside the harness is counted as
"harness-error", never as one of gptjax's classes.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

TIMEOUT_S = 300
FIXTURE_VERSION = 2  # bump when the fixtures change: a manifest of another version is rebuilt
CLASSES = ("lost", "wrong", "traceback", "leftover", "ok")

# The tiny runs every case starts from (they train in well under a minute on 2 CPU cores).
TOK_CONFIG = ["--config=demo", "--config.model.arch.n_layer=1", "--config.model.arch.n_embd=64",
              "--config.model.arch.n_head=2", "--config.data.synthetic_sizes=(600, 60, 60)",
              "--config.train.num_epochs=4", "--config.train.batch_size=16", "--config.train.learning_rate=3e-3",
              "--config.tokenizer.vocab_size=400"]
LM_CONFIG = ["--config=lm_demo", "--config.model.arch.n_layer=1", "--config.model.arch.n_embd=64",
             "--config.model.arch.n_head=2", "--config.model.arch.n_positions=64", "--config.data.max_length=64",
             "--config.data.buckets=(32, 64)", "--config.data.synthetic_sizes=(400, 40, 40)",
             "--config.train.num_epochs=2", "--config.tokenizer.vocab_size=300"]
LM_N_POSITIONS = 64
# Small training runs on a new workdir (the config cases): one short epoch.
TINY_TOK = [a for a in TOK_CONFIG if "synthetic_sizes" not in a and "num_epochs" not in a] + [
    "--config.data.synthetic_sizes=(64, 16, 16)", "--config.train.num_epochs=1"]
TINY_LM = [a for a in LM_CONFIG if "synthetic_sizes" not in a] + ["--config.data.synthetic_sizes=(40, 8, 8)"]
GEN_FAST = ["--config.generate.max_new_tokens=8"]

TEMP_NAME = re.compile(r"\.tmp-|\.old-|\.write-test-|orbax-checkpoint-tmp")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR|CRITICAL|DEBUG) ")
USAGE_ERROR = re.compile(r"^[\w.-]+: error: ")  # argparse's last line
DUMP_LINES = 5  # this many stray lines before the error line make a dump, not a one-line error


# ------------------------------------------------------------------------------------------------
# Running one command


def run_cli(repo, args, cwd, stdin_path=None, interrupt=None, timeout=TIMEOUT_S) -> dict:
    """Runs `python REPO/run.py ARGS` and returns its record. `interrupt`: (signal, trigger,
    delay_s, max_wait_s): once trigger(stderr_text) is true (or max_wait_s passed), wait delay_s
    and send the signal to the process group, as Ctrl-C in a terminal does."""
    os.makedirs(cwd, exist_ok=True)
    n = len([f for f in os.listdir(cwd) if f.startswith("stderr-")])
    err_path, out_path = os.path.join(cwd, f"stderr-{n}.txt"), os.path.join(cwd, f"stdout-{n}.txt")
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, os.path.join(repo, "run.py"), *args]
    start = time.monotonic()
    sent = None
    with open(err_path, "wb") as err, open(out_path, "wb") as out, \
            open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin:
        # Its own session: a signal sent to it reaches its group only (main() makes sure SIGINT is
        # not inherited as ignored, so Python installs its KeyboardInterrupt handler in the child).
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err, start_new_session=True)
        if interrupt:
            sig, trigger, delay, max_wait = interrupt
            while proc.poll() is None and time.monotonic() - start < max_wait:
                if trigger(_read(err_path)):
                    break
                time.sleep(0.05)
            time.sleep(delay)
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                sent = signal.Signals(sig).name
        try:
            rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    stderr = _read(err_path)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or USAGE_ERROR.match(ln)]
    return {"args": args, "rc": rc, "wall_s": round(time.monotonic() - start, 1), "signal_sent": sent,
            "error_line": errors[-1] if errors else None, "stderr_tail": lines[-5:], "traceback": "Traceback (most recent call last)" in stderr,
            "dump_lines": _dump_lines(lines), "stdout_file": out_path, "stderr_file": err_path}


def _read(path) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def _dump_lines(lines) -> int:
    """Stray lines (neither gptjax's log lines nor the error message) before the last `error:` line.
    argparse's usage block before its `PROG: error:` line is not a dump."""
    ends = [i for i, ln in enumerate(lines) if ln.startswith("error:") or USAGE_ERROR.match(ln)]
    before = lines[: ends[-1]] if ends else lines[:-1]
    if ends and USAGE_ERROR.match(lines[ends[-1]]) and before and before[0].startswith("usage:"):
        return 0
    return sum(1 for ln in before if not LOG_LINE.match(ln))


# ------------------------------------------------------------------------------------------------
# Snapshots


def snapshot(root, paths) -> tuple[dict, set]:
    """{relative path: sha256 (or link:TARGET)} of every file under `paths`, and the set of their
    directories, relative to `root`. `.lock` is left out: a training run rewrites its holder."""
    files, dirs = {}, set()

    def add_file(p):
        rel = os.path.relpath(p, root)
        if os.path.islink(p):
            files[rel] = "link:" + os.readlink(p)
        elif os.path.basename(p) != ".lock":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            files[rel] = h.hexdigest()

    for top in paths:
        if os.path.isdir(top) and not os.path.islink(top):
            for d, subdirs, names in os.walk(top):
                dirs.add(os.path.relpath(d, root))
                for name in names:
                    add_file(os.path.join(d, name))
        elif os.path.lexists(top):
            add_file(top)
    return files, dirs


def temp_names(root) -> set:
    found = set()
    for d, subdirs, names in os.walk(root):
        for name in subdirs + names:
            if TEMP_NAME.search(name):
                found.add(os.path.relpath(os.path.join(d, name), root))
    return found


# ------------------------------------------------------------------------------------------------
# A case


class Case:
    """One hostile case: its own directory, its protected trees, its commands and its findings."""

    def __init__(self, name, sweep):
        self.name, self.sweep, self.repo = name, sweep, sweep.repo
        self.dir = os.path.join(sweep.out, "cases", name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.protected, self.allowed, self.allow_new = [], [], False
        self.new_workdirs = []  # workdirs a command creates: one left empty or holding only .lock is a leftover
        self.commands, self.wrong, self.notes = [], [], []
        self.before = None

    def path(self, *parts) -> str:
        return os.path.join(self.dir, *parts)

    def copy(self, fixture, dest=None) -> str:
        """A private copy of a fixture (a directory or a file) in the case directory."""
        src = os.path.join(self.sweep.fixtures, fixture)
        dest = self.path(dest or os.path.basename(fixture))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dest, symlinks=True)
        else:
            shutil.copy2(src, dest)
        return dest

    def protect(self, *paths) -> None:
        assert self.before is None, "protect() before the first command"
        self.protected.extend(paths)

    def allow(self, *patterns) -> None:
        """Relative paths (fnmatch patterns) the case means to change."""
        self.allowed.extend(patterns)

    def write(self, rel, text, protect=True) -> str:
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        if protect:
            self.protect(p)
        return p

    def cli(self, *args, expect="refuse", stdin=None, interrupt=None, role="command") -> dict:
        """Runs one command. expect: "refuse" (exit 0 is wrong), "succeed" (a failure is wrong) or "any"."""
        if self.before is None:
            self.before = snapshot(self.dir, self.protected)
            self.temps_before = temp_names(self.dir)
        record = run_cli(self.repo, [str(a) for a in args], self.path("_cwd"), stdin, interrupt)
        record.update(expect=expect, role=role)
        self.commands.append(record)
        last = record["error_line"] or (record["stderr_tail"][-1] if record["stderr_tail"] else "")
        if record["rc"] is None:
            self.wrong.append(f"{role} timed out after {TIMEOUT_S} s")
        elif expect == "refuse" and record["rc"] == 0:
            self.wrong.append(f"{role} exited 0 where a refusal was expected")
        elif expect == "succeed" and record["rc"] != 0:
            self.wrong.append(f"{role} failed where it should succeed (rc {record['rc']}): {last[:150]}")
        return record

    def eval_matches(self, baseline, *source, what="follow-up eval") -> None:
        """An eval whose metrics must equal a fixture's baseline (nothing silently changed)."""
        out = self.path(f"_{what.replace(' ', '_')}_{len(self.commands)}.json")
        r = self.cli("--mode=eval", *source, f"--output={out}", expect="succeed", role=what)
        if r["rc"] == 0:
            self.compare(out, baseline, what)

    def compare(self, metrics_file, baseline, what) -> None:
        """Records `wrong` unless the metrics JSON equals the baseline's scalar metrics."""
        expected = self.sweep.baselines[baseline]
        try:
            with open(metrics_file, encoding="utf-8") as f:
                got = json.load(f)
        except (OSError, ValueError) as e:
            self.wrong.append(f"{what}: exit 0 but no metrics file ({e})")
            return
        diffs = [f"{k} {got.get(k)!r} vs {v:.4f}" for k, v in expected.items()
                 if not isinstance(got.get(k), (int, float)) or not math.isclose(got[k], v, rel_tol=1e-6, abs_tol=1e-9)]
        if diffs:
            self.wrong.append(f"{what}: metrics differ from the baseline ({'; '.join(diffs[:3])})")

    def new_workdir(self, rel) -> str:
        p = self.path(rel)
        self.new_workdirs.append(p)
        return p

    # ---- the verdict

    def classify(self) -> tuple[str, str, dict]:
        details = {}
        if self.before is None:
            return "ok", "no command ran", details
        after = snapshot(self.dir, self.protected)
        lost, added = _diff(self.before, after, self.allowed)
        details.update(lost=lost, added=added)
        temps = sorted(temp_names(self.dir) - self.temps_before)
        leftovers = list(temps)
        for w in self.new_workdirs:
            if os.path.isdir(w) and set(os.listdir(w)) <= {".lock"}:
                leftovers.append(os.path.relpath(w, self.dir) + "/ (" + ("only .lock" if os.listdir(w) else "empty") + ")")
        if added and not self.allow_new:
            leftovers.extend(f"new in a protected tree: {a}" for a in added[:5])
        details["leftovers"] = leftovers
        tracebacks = []
        for c in self.commands:
            if c["traceback"]:
                tracebacks.append(f"{c['role']}: Traceback in stderr")
            elif c["rc"] is not None and c["rc"] < 0 and not c["signal_sent"]:
                tracebacks.append(f"{c['role']}: crashed with signal {-c['rc']}")
            elif c["rc"] not in (0, None) and c["dump_lines"] >= DUMP_LINES:
                tracebacks.append(f"{c['role']}: {c['dump_lines']}-line dump before the error")
        findings = []  # (class, reason), most serious first
        if lost:
            findings.append(("lost", f"{len(lost)} protected path(s) damaged: " + ", ".join(lost[:4])))
        if self.wrong:
            findings.append(("wrong", "; ".join(self.wrong)))
        if tracebacks:
            findings.append(("traceback", "; ".join(dict.fromkeys(tracebacks))))
        if leftovers:
            findings.append(("leftover", "; ".join(leftovers[:4])))
        details["findings"] = findings
        if findings:
            (cls, reason), rest = findings[0], findings[1:]
            return cls, reason + (f" || also {rest[0][0]}: {rest[0][1][:100]}" if rest else ""), details
        return "ok", "; ".join(self.notes + [_ok_reason(self.commands)]), details


def _diff(before, after, allowed) -> tuple[list, list]:
    (files0, dirs0), (files1, dirs1) = before, after
    ok = lambda rel: any(fnmatch.fnmatch(rel, pat) for pat in allowed)  # noqa: E731
    lost = []
    for rel, digest in sorted(files0.items()):
        if ok(rel):
            continue
        if rel not in files1:
            lost.append(f"{rel} (replaced by a directory)" if rel in dirs1 else f"{rel} (gone)")
        elif files1[rel] != digest:
            lost.append(f"{rel} (changed)")
    if not lost:
        lost = [f"{d}/ (gone)" for d in sorted(dirs0 - dirs1) if not ok(d)]
    added = sorted(rel for rel in set(files1) - set(files0) if not ok(rel) and not TEMP_NAME.search(rel))
    return lost, added


def _ok_reason(commands) -> str:
    main = commands[0]
    if main["rc"] == 0:
        return "done (exit 0), nothing lost"
    if main["signal_sent"]:
        how = f"killed by {main['signal_sent']}" if main["rc"] < 0 else f"exit {main['rc']} after {main['signal_sent']}"
        return f"{how}, nothing lost or left: {(main['error_line'] or (main['stderr_tail'] or [''])[-1])[:100]}"
    last = main["error_line"] or (main["stderr_tail"][-1] if main["stderr_tail"] else f"rc {main['rc']}")
    note = " [the message names a temporary file]" if TEMP_NAME.search(last) else ""
    return f"refused: {last[:140]}{note}"


# ------------------------------------------------------------------------------------------------
# Fixtures


NER = {"PER": ["John Smith", "Maria Garcia", "Li Wei", "Ahmed Khan", "Anna Berg", "Tom", "Olga Petrova"],
       "LOC": ["Paris", "New York", "Berlin", "Lagos", "Lima", "Cape Town"],
       "ORG": ["Acme Corp", "Drasu Telecom", "United Nations", "Bank of Lima", "Nordica"],
       "MISC": ["German", "Olympic", "French", "World Cup"]}
TEMPLATES = [("{PER} visited {LOC} on Monday .", "NNP VBD NNP IN NNP ."),
             ("{ORG} hired {PER} last year .", "NNP VBD NNP JJ NN ."),
             ("The {MISC} team won in {LOC} .", "DT JJ NN VBD IN NNP ."),
             ("{PER} said {ORG} will open an office in {LOC} .", "NNP VBD NNP MD VB DT NN IN NNP ."),
             ("Shares of {ORG} fell 3 percent .", "NNS IN NNP VBD CD NN ."),
             ("{PER} met {PER} at the {MISC} games .", "NNP VBD NNP IN DT JJ NNS .")]


def ner_sentences(seed, count, pos=False) -> list[list[tuple[str, str]]]:
    """Deterministic CoNLL sentences: (word, tag) with IOB2 NER tags, or POS tags (pos=True)."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        template, tags = TEMPLATES[rng.randint(len(TEMPLATES))]
        pos_tags = tags.split()
        sentence = []
        for slot, pos_tag in zip(template.split(), pos_tags):
            if slot.startswith("{"):
                kind = slot.strip("{}")
                words = NER[kind][rng.randint(len(NER[kind]))].split()
                for i, w in enumerate(words):
                    sentence.append((w, pos_tag if pos else ("B-" if i == 0 else "I-") + kind))
            else:
                sentence.append((slot, pos_tag if pos else "O"))
        out.append(sentence)
    return out


def write_conll(path, sentences) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n")


def write_conll_dir(directory, seed, pos=False) -> None:
    os.makedirs(directory, exist_ok=True)
    for i, (split, count) in enumerate((("train", 120), ("dev", 30), ("test", 30))):
        write_conll(os.path.join(directory, f"{split}.conll"), ner_sentences(seed + i, count, pos))


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def write_jsonl_splits(directory, seed, sizes, row) -> None:
    """train, validation and test .jsonl files of `sizes` objects each, row(rng) a line."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(seed)
    for split, count in zip(("train", "validation", "test"), sizes):
        with open(os.path.join(directory, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row(rng)) + "\n" for _ in range(count))


def completion_row(rng) -> dict:
    i = rng.randint(7)
    return {"prompt": f"After {DAYS[i]} comes", "completion": f" {DAYS[(i + 1) % 7]}"}


def sentiment_row(rng) -> dict:
    good = rng.randint(2)
    return {"text": " ".join(["a", "great" if good else "terrible", "film", "about", DAYS[rng.randint(7)]]),
            "label": "pos" if good else "neg"}


def write_prompt_completion_dir(directory) -> None:
    write_jsonl_splits(directory, 7, (200, 20, 20), completion_row)


def write_sequence_dir(directory) -> None:
    write_jsonl_splits(directory, 11, (60, 16, 16), sentiment_row)


class Sweep:
    def __init__(self, repo, out):
        self.repo, self.out = os.path.abspath(repo), os.path.abspath(out)
        self.fixtures = os.path.join(self.out, "fixtures")
        self.baselines = {}

    def fx(self, *parts) -> str:
        return os.path.join(self.fixtures, *parts)

    def build_fixtures(self) -> None:
        manifest = self.fx("manifest.json")
        if os.path.exists(manifest):
            with open(manifest, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("repo") == self.repo and saved.get("version") == FIXTURE_VERSION:
                self.baselines = saved["baselines"]
                print(f"fixtures: reusing {self.fixtures}", flush=True)
                return
        shutil.rmtree(self.fixtures, ignore_errors=True)
        os.makedirs(self.fx("data"))
        cwd = self.fx("_cwd")
        t0 = time.monotonic()

        def must(*args):
            r = run_cli(self.repo, [str(a) for a in args], cwd)
            if r["rc"] != 0:
                sys.exit(f"fixture command failed (rc {r['rc']}): {' '.join(r['args'])}\n" + "\n".join(r["stderr_tail"]))
            return r

        # Data the user brings.
        write_conll(self.fx("data", "my.conll"), ner_sentences(100, 40))
        write_conll_dir(self.fx("data", "conll_other"), 200)
        write_conll_dir(self.fx("data", "pos"), 300, pos=True)
        write_prompt_completion_dir(self.fx("data", "pc"))
        write_sequence_dir(self.fx("data", "seq"))
        with open(self.fx("data", "sents.txt"), "w", encoding="utf-8") as f:
            f.write("Hughes joined Drasu Telecom .\nMaria Garcia visited Paris on Monday .\n\n"
                    "The German team won in Lima .\n")
        with open(self.fx("data", "prompts.txt"), "w", encoding="utf-8") as f:
            f.write("Monday is followed by\nCount: 1 2 3\nThe capital of France is\n")
        sents = [" ".join(w for w, _ in s) for s in ner_sentences(5, 500)]
        with open(self.fx("data", "many_sents.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(sents * 60) + "\n")  # 30,000 lines: a predict that runs long enough to kill
        with open(self.fx("data", "many_prompts.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(f"{DAYS[i % 7]} is followed by" for i in range(400)) + "\n")

        # The trained runs, their exports and baselines.
        print("fixtures: training the token run ...", flush=True)
        must(*TOK_CONFIG, f"--workdir={self.fx('tok')}")
        must("--mode=export", f"--workdir={self.fx('tok')}", f"--export_dir={self.fx('tok_export')}")
        print("fixtures: training the causal_lm run ...", flush=True)
        must(*LM_CONFIG, f"--workdir={self.fx('lm')}")
        must("--mode=export", f"--workdir={self.fx('lm')}", f"--export_dir={self.fx('lm_export')}")
        evals = {"tok_test": [f"--workdir={self.fx('tok')}"],
                 "tok_latest": [f"--workdir={self.fx('tok')}", "--checkpoint=latest"],
                 "tok_export": [f"--model_dir={self.fx('tok_export')}"],
                 "tok_input": [f"--workdir={self.fx('tok')}", f"--input={self.fx('data', 'my.conll')}"],
                 "lm_test": [f"--workdir={self.fx('lm')}"]}
        for name, source in evals.items():
            out = self.fx("_cwd", f"baseline_{name}.json")
            must("--mode=eval", *source, f"--output={out}")
            with open(out, encoding="utf-8") as f:
                metrics = json.load(f)
            self.baselines[name] = {k: v for k, v in metrics.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
        stray = temp_names(self.fixtures)
        if stray:
            sys.exit(f"fixtures hold temporary names already: {sorted(stray)}")
        with open(manifest, "w", encoding="utf-8") as f:
            json.dump({"repo": self.repo, "version": FIXTURE_VERSION, "baselines": self.baselines}, f, indent=2)
        print(f"fixtures: built in {time.monotonic() - t0:.0f} s; baselines "
              + ", ".join(f"{k}: {json.dumps({m: round(v, 4) for m, v in b.items()})}" for k, b in self.baselines.items()),
              flush=True)


# ------------------------------------------------------------------------------------------------
# Tampering helpers


def largest_file(directory) -> str:
    files = [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]
    return max(files, key=lambda p: (os.path.getsize(p), p))


def damage(path, seed) -> None:
    """4 KB of random bytes written over the middle of the file; its size is unchanged."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(max(0, size // 2 - 2048))
        f.write(np.random.RandomState(seed).bytes(min(4096, size)))
    assert os.path.getsize(path) == size


def latest_checkpoint(workdir) -> str:
    ckpts = os.path.join(workdir, "checkpoints")
    return os.path.join(ckpts, max((d for d in os.listdir(ckpts) if d.isdigit()), key=int))


def edit_json(path, fn) -> None:
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    fn(obj)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def swap_two(labels: list) -> None:
    i, j = labels.index("B-PER"), labels.index("B-LOC")
    labels[i], labels[j] = labels[j], labels[i]


def on_log(text):
    """An interrupt trigger: stderr has a given text."""
    return lambda stderr: text in stderr


def file_appears(directory, pattern):
    """An interrupt trigger: a file matching `pattern` exists in `directory`."""
    return lambda stderr: os.path.isdir(directory) and any(fnmatch.fnmatch(n, pattern) for n in os.listdir(directory))


# ------------------------------------------------------------------------------------------------
# The cases. Each takes a Case; the table at the end names them.


def control_eval(c):
    tok = c.copy("tok")
    c.protect(tok)
    c.eval_matches("tok_test", f"--workdir={tok}", what="eval")




def control_eval_input(c):
    tok, conll = c.copy("tok"), c.copy("data/my.conll")
    c.protect(tok, conll)
    c.eval_matches("tok_input", f"--workdir={tok}", f"--input={conll}", what="eval")


def control_eval_odd_path(c):
    tok = c.copy("tok", "my run ü (copy)")
    c.protect(tok)
    c.eval_matches("tok_test", f"--workdir={tok}", what="eval")


def eval_glob_path(c):
    """An odd but valid path: glob characters in the workdir's name must not make it unreadable."""
    tok = c.copy("tok", "runs [1] *")
    c.protect(tok)
    c.eval_matches("tok_test", f"--workdir={tok}", what="eval")


def eval_recursive_glob_path(c):
    """'**' in the workdir's name: Orbax reads checkpoints through globs that refuse it, so the
    right answer is a one-line refusal, not 'the best model is damaged'."""
    tok = c.copy("tok", "runs **")
    c.protect(tok)
    r = c.cli("--mode=eval", f"--workdir={tok}", expect="refuse")
    if r["rc"] != 0 and "damaged" in (r["error_line"] or ""):
        c.wrong.append("a readable run called damaged: " + r["error_line"])


def control_predict(c):
    tok, sents = c.copy("tok"), c.copy("data/sents.txt")
    c.protect(tok, sents)
    out = c.path("tags.jsonl")
    r = c.cli("--mode=predict", f"--workdir={tok}", f"--input={sents}", f"--output={out}", expect="succeed")
    if r["rc"] == 0:
        n = sum(1 for _ in open(out, encoding="utf-8")) if os.path.exists(out) else 0
        if n != 4:
            c.wrong.append(f"predict wrote {n} lines for 4 input lines")


def control_generate(c):
    lm, prompts = c.copy("lm"), c.copy("data/prompts.txt")
    c.protect(lm, prompts)
    c.cli("--mode=generate", f"--workdir={lm}", f"--input={prompts}", f"--output={c.path('gen.jsonl')}", *GEN_FAST,
          expect="succeed")


def control_export_new_dir(c):
    tok = c.copy("tok")
    c.protect(tok)
    target = c.path("new export ü")
    c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={target}", expect="succeed")
    c.eval_matches("tok_export", f"--model_dir={target}")




# ---- refused training commands on a trained workdir: nothing written, eval still gives the baseline


def refused_train(*overrides, config=TOK_CONFIG, fixture="tok", baseline="tok_test"):
    def case(c):
        run = c.copy(fixture)
        extra = []
        for o in overrides:
            if "{other}" in o:
                o = o.format(other=c.copy("data/conll_other"))
                c.protect(c.path("conll_other"))
            extra.append(o)
        c.protect(run)
        keys = {o.split("=", 1)[0] for o in extra}
        args = [a for a in config if a.split("=", 1)[0] not in keys] + extra
        c.cli(*args, f"--workdir={run}", expect="refuse")
        c.eval_matches(baseline, f"--workdir={run}")
    return case




# ---- export


def export_cases():
    def onto_earlier_export_with_readme(overwrite):
        def case(c):
            tok, e = c.copy("tok"), c.copy("tok_export", "hf")
            card = c.write("hf/README.md", "# My model card\n\nHand-written notes that must survive.\n")
            c.protect(tok, e, card)
            c.allow(*(f"hf/{n}" for n in os.listdir(c.sweep.fx("tok_export"))))  # gptjax's own files may be rewritten
            r = c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={e}", *(["--overwrite"] if overwrite else []),
                      expect="any")
            if r["rc"] == 0:
                c.eval_matches("tok_export", f"--model_dir={e}")
        return case

    def onto_other_runs_export(c):
        tok, lm = c.copy("tok"), c.copy("lm")
        c.protect(tok, lm)
        c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={lm}/export", expect="refuse")

    def onto_trained_run(overwrite):
        def case(c):
            tok, lm = c.copy("tok"), c.copy("lm")
            c.protect(tok, lm)
            c.allow_new = overwrite  # --overwrite may add the export's files beside the run's, never replace them
            c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={lm}", *(["--overwrite"] if overwrite else []),
                  expect="refuse" if not overwrite else "any")
        return case

    def onto_run_trained_into_old_export(c):
        tok, lm = c.copy("tok"), c.copy("lm")
        old = c.sweep.fx("lm_export")
        for name in os.listdir(old):  # the run was trained into a directory that held an export
            shutil.copy2(os.path.join(old, name), os.path.join(lm, name))
        c.protect(tok, lm)
        c.allow(*(f"lm/{n}" for n in os.listdir(old)))
        c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={lm}", expect="any")

    def onto_unrelated_dir(overwrite):
        def case(c):
            tok = c.copy("tok")
            notes = c.write("mine/notes.txt", "my notes\n")
            table = c.write("mine/data/table.csv", "a,b\n1,2\n")
            c.protect(tok, notes, table)
            c.allow_new = True
            r = c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={c.path('mine')}",
                      *(["--overwrite"] if overwrite else []), expect="any" if overwrite else "refuse")
            if overwrite and r["rc"] == 0:
                c.eval_matches("tok_export", f"--model_dir={c.path('mine')}")
        return case

    def onto_source(target):
        def case(c):
            tok = c.copy("tok", "parent/tok")
            c.protect(c.path("parent"))
            c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={target(c, tok)}", expect="refuse")
        return case

    def onto_file(c):
        tok = c.copy("tok")
        f = c.write("target.bin", "a file of mine\n")
        c.protect(tok, f)
        c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={f}", expect="refuse")

    def model_dir_onto_itself(c):
        e = c.copy("tok_export", "hf")
        c.protect(e)
        c.cli("--mode=export", f"--model_dir={e}", f"--export_dir={e}", expect="refuse")

    def no_export_dir(c):
        tok = c.copy("tok")
        c.protect(tok)
        c.cli("--mode=export", f"--workdir={tok}", expect="refuse")

    return [
        ("export_onto_earlier_export_with_readme", onto_earlier_export_with_readme(False)),
        ("export_onto_earlier_export_with_readme_overwrite", onto_earlier_export_with_readme(True)),
        ("export_onto_other_runs_export_dir", onto_other_runs_export),
        ("export_onto_trained_run", onto_trained_run(False)),
        ("export_onto_trained_run_overwrite", onto_trained_run(True)),
        ("export_onto_run_trained_into_old_export", onto_run_trained_into_old_export),
        ("export_onto_unrelated_dir", onto_unrelated_dir(False)),
        ("export_onto_unrelated_dir_overwrite", onto_unrelated_dir(True)),
        ("export_onto_source_run", onto_source(lambda c, tok: tok)),
        ("export_into_source_runs_export", onto_source(lambda c, tok: os.path.join(tok, "export"))),
        ("export_onto_parent_of_source_run", onto_source(lambda c, tok: c.path("parent"))),
        ("export_dir_is_a_file", onto_file),
        ("export_model_dir_onto_itself", model_dir_onto_itself),
        ("export_without_export_dir", no_export_dir),
    ]


# ---- eval / predict / generate outputs


def eval_output(target, with_input=False, model_dir=False, expect="refuse"):
    """eval --output=TARGET(case, run-or-export path, input path)."""
    def case(c):
        src = c.copy("tok_export", "hf") if model_dir else c.copy("tok")
        conll = c.copy("data/my.conll")
        os.makedirs(c.path("outdir"), exist_ok=True)
        keep = c.write("outdir/keep.txt", "mine\n")
        c.protect(src, conll, keep)
        out = target(c, src, conll)
        r = c.cli("--mode=eval", f"--model_dir={src}" if model_dir else f"--workdir={src}",
                  *([f"--input={conll}"] if with_input else []), f"--output={out}", expect=expect)
        if r["rc"] == 0 and expect != "refuse":
            c.compare(out, "tok_input" if with_input else ("tok_export" if model_dir else "tok_test"), "eval --output")
    return case


def reading_output(mode, target, model_dir=False, expect="refuse"):
    """predict (token run) or generate (causal_lm run) --output=TARGET(case, source, input)."""
    def case(c):
        if mode == "predict":
            src = c.copy("tok_export", "hf") if model_dir else c.copy("tok")
            inp, extra = c.copy("data/sents.txt"), []
        else:
            src = c.copy("lm_export", "hf") if model_dir else c.copy("lm")
            inp, extra = c.copy("data/prompts.txt"), GEN_FAST
        os.makedirs(c.path("outdir"), exist_ok=True)
        keep = c.write("outdir/keep.txt", "mine\n")
        c.protect(src, inp, keep)
        out = target(c, src, inp)
        c.cli(f"--mode={mode}", f"--model_dir={src}" if model_dir else f"--workdir={src}", f"--input={inp}",
              f"--output={out}", *extra, expect=expect)
    return case


def reading_input(mode, make_input, expect="refuse"):
    def case(c):
        src = c.copy("tok") if mode in ("eval", "predict") else c.copy("lm")
        c.protect(src)
        inp = make_input(c)
        c.cli(f"--mode={mode}", f"--workdir={src}", f"--input={inp}", f"--output={c.path('out.jsonl')}",
              *(GEN_FAST if mode == "generate" else []), expect=expect)
    return case


def unknown_tag_file(c):
    return c.write("odd.conll", "Hughes B-FOO\njoined O\n.\tO\n", protect=True)




def eval_workdir_missing(c):
    w = c.path("missing_run")
    c.cli("--mode=eval", f"--workdir={w}", f"--output={c.path('out.json')}", expect="refuse")
    if os.path.exists(w):
        c.wrong.append("a reading mode created the missing workdir")


# ---- tampered weights, labels, tokenizer: expected refused, or exactly the baseline


def tampered(tamper, mode="eval", checkpoint=None, model_dir=False, fixture="tok", expect="refuse", baseline=None):
    def case(c):
        src = c.copy(fixture + "_export", "hf") if model_dir else c.copy(fixture)
        tamper(c, src)
        c.protect(src)
        source = [f"--model_dir={src}" if model_dir else f"--workdir={src}"]
        source += [f"--checkpoint={checkpoint}"] if checkpoint else []
        out = c.path("out.json" if mode == "eval" else "out.jsonl")
        extra = []
        if mode == "predict":
            extra = [f"--input={c.copy('data/sents.txt')}"]
        elif mode == "generate":
            extra = [f"--input={c.copy('data/prompts.txt')}", *GEN_FAST]
        elif mode == "export":
            out = c.path("hf_out")
        flag = "--export_dir" if mode == "export" else "--output"
        r = c.cli(f"--mode={mode}", *source, *extra, f"{flag}={out}", expect=expect)
        if r["rc"] == 0 and mode == "eval":  # what the silent result was: the baseline's metrics, or others
            c.compare(out, baseline or (fixture + ("_export" if model_dir else "_latest" if checkpoint else "_test")),
                      "eval of the tampered run")
    return case


def damage_best(c, run):
    damage(largest_file(os.path.join(run, "best")), 1)


def damage_latest(c, run):
    """Every array file of the latest checkpoint: its largest may hold only the optimizer state,
    which eval never reads (training's resume verifies and sets it aside)."""
    for root, _, files in os.walk(latest_checkpoint(run)):
        for name in files if os.path.basename(root) == "d" else ():
            damage(os.path.join(root, name), 2)


def damage_safetensors(c, e):
    damage(os.path.join(e, "model.safetensors"), 3)




def swap_run_json(c, run):
    edit_json(os.path.join(run, "run.json"), lambda o: swap_two(o["labels"]))


def swap_labels_json(c, run):
    edit_json(os.path.join(run, "labels.json"), lambda o: swap_two(o["names"]))


def swap_both(c, run):
    swap_run_json(c, run)
    swap_labels_json(c, run)


def swap_export_config(c, e):
    def fn(o):
        id2label = o["id2label"]
        ids = {v: k for k, v in id2label.items()}
        i, j = ids["B-PER"], ids["B-LOC"]
        id2label[i], id2label[j] = id2label[j], id2label[i]
        o["label2id"] = {v: int(k) for k, v in id2label.items()}
    edit_json(os.path.join(e, "config.json"), fn)


def replace_tokenizer(c, run):
    shutil.rmtree(os.path.join(run, "tokenizer"))
    shutil.copytree(c.sweep.fx("lm", "tokenizer"), os.path.join(run, "tokenizer"))




# ---- generation settings (causal_lm run): each expected refused in one line


def generate_setting(*overrides, model_dir=False):
    def case(c):
        src = c.copy("lm_export", "hf") if model_dir else c.copy("lm")
        prompts = c.copy("data/prompts.txt")
        c.protect(src, prompts)
        c.cli("--mode=generate", f"--model_dir={src}" if model_dir else f"--workdir={src}", f"--input={prompts}",
              f"--output={c.path('gen.jsonl')}", *overrides, expect="refuse")
    return case


def reading_override(mode, *overrides, expect="refuse", baseline=None):
    def case(c):
        tok = c.copy("tok")
        c.protect(tok)
        out = c.path("out.json")
        extra = [f"--input={c.copy('data/sents.txt')}"] if mode == "predict" else []
        r = c.cli(f"--mode={mode}", f"--workdir={tok}", *extra, f"--output={out}", *overrides, expect=expect)
        if r["rc"] == 0 and baseline:
            c.compare(out, baseline, f"{mode} with {' '.join(overrides)}")
    return case


# ---- training configs on a new workdir


def train_config(*overrides, base=TINY_TOK, expect="refuse", check=None, data=None):
    def case(c):
        args = list(base)
        if data:
            src = c.copy(f"data/{data}")
            c.protect(src)
            args.append(f"--config.data.source={src}")
        keys = {o.split("=", 1)[0] for o in overrides}
        args = [a for a in args if a.split("=", 1)[0] not in keys] + list(overrides)
        w = c.new_workdir("run")
        r = c.cli(*args, f"--workdir={w}", expect=expect)
        if r["rc"] == 0 and check:
            check(c, w)
    return case


def has_token_accuracy(c, w):
    try:
        with open(os.path.join(w, "results.json"), encoding="utf-8") as f:
            test = json.load(f)["test"]
    except (OSError, ValueError, KeyError) as e:
        c.wrong.append(f"trained, but no test results ({e})")
        return
    if not isinstance(test.get("accuracy"), (int, float)):
        c.wrong.append(f"trained POS tags, but no token accuracy in results.json (keys: {sorted(test)[:6]})")
    else:
        c.notes.append(f"trained on POS tags: test accuracy {test['accuracy']:.3f}")


def config_file(text):
    def case(c):
        path = c.write("myconfig.py", text)
        w = c.new_workdir("run")
        c.cli(f"--config={path}", f"--workdir={w}", expect="refuse")
    return case


def train_bad_source(c):
    w = c.new_workdir("run")
    c.cli(*TINY_TOK, f"--config.data.source={c.path('no_such_data')}", f"--workdir={w}", expect="refuse")






# ---- benchmark


def benchmark(config, *extra):
    def case(c):
        w = c.path("bench")
        r = c.cli(*config, "--mode=benchmark", f"--workdir={w}", "--benchmark_steps=1", "--benchmark_warmup=0",
                  *extra, expect="any")
        if r["rc"] == 0 and not os.path.exists(os.path.join(w, "benchmark.json")):
            c.wrong.append("benchmark exited 0 without WORKDIR/benchmark.json")
    return case


# ---- signals


def predict_sigterm(c):
    tok, inp = c.copy("tok"), c.copy("data/many_sents.txt")
    c.protect(tok, inp)
    os.makedirs(c.path("out"))
    c.cli("--mode=predict", f"--workdir={tok}", f"--input={inp}", f"--output={c.path('out', 'tags.jsonl')}",
          expect="any", interrupt=(signal.SIGTERM, file_appears(c.path("out"), "*"), 1.0, 60))
    if os.path.exists(c.path("out", "tags.jsonl")):
        c.notes.append("finished before the signal")


def generate_signal(sig):
    def case(c):
        lm, inp = c.copy("lm"), c.copy("data/many_prompts.txt")
        c.protect(lm, inp)
        os.makedirs(c.path("out"))
        c.cli("--mode=generate", f"--workdir={lm}", f"--input={inp}", f"--output={c.path('out', 'gen.jsonl')}",
              "--config.generate.max_new_tokens=48", "--config.generate.batch_size=4", expect="any",
              interrupt=(sig, file_appears(c.path("out"), "*"), 1.0, 60))
        if os.path.exists(c.path("out", "gen.jsonl")):
            c.notes.append("finished before the signal")
    return case


def train_sigint_setup(c):
    w = c.new_workdir("run")
    lock = os.path.join(w, ".lock")
    c.cli(*TINY_TOK, f"--workdir={w}", expect="any",
          interrupt=(signal.SIGINT, lambda err: os.path.exists(lock) or " rows, " in err, 0.3, 120))


def export_sigint(c):
    tok = c.copy("tok")
    c.protect(tok)
    c.new_workdir("hf")
    c.cli("--mode=export", f"--workdir={tok}", f"--export_dir={c.path('hf')}", expect="any",
          interrupt=(signal.SIGINT, on_log("the best model"), 0.0, 120))


def train_sigterm_then_resume(c):
    w = c.new_workdir("run")
    args = [a for a in TOK_CONFIG if "num_epochs" not in a] + ["--config.train.num_epochs=3"]
    r = c.cli(*args, f"--workdir={w}", expect="any", interrupt=(signal.SIGTERM, on_log("step 20/"), 0.0, 200))
    if r["rc"] not in (0, 75):
        c.wrong.append(f"SIGTERM during training: exit {r['rc']}, not 75 (checkpoint and stop)")
    c.cli(*args, f"--workdir={w}", expect="succeed", role="resume")


# ------------------------------------------------------------------------------------------------
# The table of cases


def cases():
    ws = lambda c, src, inp: os.path.join(src, "metrics.jsonl")  # noqa: E731
    table = [
        ("control_eval", control_eval),
        ("control_eval_input", control_eval_input),
        ("control_eval_odd_path", control_eval_odd_path),
        ("eval_workdir_path_with_glob_chars", eval_glob_path),
        ("eval_workdir_path_with_recursive_glob", eval_recursive_glob_path),
        ("control_predict", control_predict),
        ("control_generate", control_generate),
        ("control_export_new_dir", control_export_new_dir),
        # refused training commands: nothing written, the run still evaluates to its baseline
        ("train_refused_n_layer_3", refused_train("--config.model.arch.n_layer=3")),
        ("train_refused_max_length_32", refused_train("--config.data.max_length=32", "--config.data.buckets=(16, 32)")),
        ("train_refused_vocab_size_500", refused_train("--config.tokenizer.vocab_size=500")),
        ("train_refused_batch_size_8", refused_train("--config.train.batch_size=8")),
        ("train_refused_source_other_resume_false",
         refused_train("--config.data.source={other}", "--config.checkpoint.resume=false")),
        ("train_refused_resume_false", refused_train("--config.checkpoint.resume=false")),
        ("train_refused_source_other", refused_train("--config.data.source={other}")),
        ("train_refused_lm_max_length_32",
         refused_train("--config.data.max_length=32", "--config.data.buckets=(32,)", config=LM_CONFIG, fixture="lm",
                       baseline="lm_test")),
        *export_cases(),
        # eval --output
        ("eval_output_onto_its_input", eval_output(lambda c, s, i: i, with_input=True)),
        ("eval_output_onto_results_json", eval_output(lambda c, s, i: os.path.join(s, "results.json"))),
        ("eval_output_onto_metrics_jsonl", eval_output(ws)),
        ("eval_output_new_file_in_workdir", eval_output(lambda c, s, i: os.path.join(s, "eval.json"))),
        ("eval_output_into_export", eval_output(lambda c, s, i: os.path.join(s, "metrics.json"), model_dir=True)),
        ("eval_output_is_a_directory", eval_output(lambda c, s, i: c.path("outdir"))),
        ("eval_output_parent_missing", eval_output(lambda c, s, i: c.path("no", "such", "m.json"), expect="any")),
        ("eval_input_missing", reading_input("eval", lambda c: c.path("nope.conll"))),
        ("eval_input_unknown_tag", reading_input("eval", unknown_tag_file)),
        ("eval_workdir_missing", eval_workdir_missing),
        # predict / generate --output
        ("predict_output_onto_metrics_jsonl", reading_output("predict", ws)),
        ("predict_output_onto_its_input", reading_output("predict", lambda c, s, i: i)),
        ("predict_output_into_export", reading_output("predict", lambda c, s, i: os.path.join(s, "tags.jsonl"), model_dir=True)),
        ("predict_output_onto_export_weights",
         reading_output("predict", lambda c, s, i: os.path.join(s, "model.safetensors"), model_dir=True)),
        ("predict_output_is_a_directory", reading_output("predict", lambda c, s, i: c.path("outdir"))),
        ("predict_output_parent_missing", reading_output("predict", lambda c, s, i: c.path("no", "such", "t.jsonl"),
                                                         expect="any")),
        ("generate_output_onto_metrics_jsonl", reading_output("generate", ws)),
        ("generate_output_onto_its_input", reading_output("generate", lambda c, s, i: i)),
        ("generate_output_into_export", reading_output("generate", lambda c, s, i: os.path.join(s, "gen.jsonl"), model_dir=True)),
        # tampered weights, labels, tokenizer
        ("damaged_best_eval", tampered(damage_best)),
        ("damaged_best_predict", tampered(damage_best, mode="predict")),
        ("damaged_latest_eval", tampered(damage_latest, checkpoint="latest")),
        ("damaged_export_safetensors_eval", tampered(damage_safetensors, model_dir=True)),
        ("damaged_lm_best_generate", tampered(damage_best, mode="generate", fixture="lm")),
        ("swapped_labels_run_json_eval", tampered(swap_run_json, expect="any", baseline="tok_test")),
        ("swapped_labels_labels_json_eval", tampered(swap_labels_json, expect="any", baseline="tok_test")),
        ("swapped_labels_both_eval", tampered(swap_both, expect="any", baseline="tok_test")),
        ("swapped_labels_export_config_eval", tampered(swap_export_config, model_dir=True, expect="any",
                                                       baseline="tok_export")),
        ("replaced_tokenizer_eval", tampered(replace_tokenizer, expect="any", baseline="tok_test")),
        # generation settings
        ("generate_temperature_nan", generate_setting("--config.generate.temperature=nan", *GEN_FAST)),
        ("generate_temperature_inf", generate_setting("--config.generate.temperature=inf", *GEN_FAST)),
        ("generate_temperature_-1", generate_setting("--config.generate.temperature=-1", *GEN_FAST)),
        ("generate_max_new_tokens_-1", generate_setting("--config.generate.max_new_tokens=-1")),
        ("generate_max_new_tokens_100000", generate_setting("--config.generate.max_new_tokens=100000")),
        ("generate_max_new_tokens_n_positions", generate_setting(f"--config.generate.max_new_tokens={LM_N_POSITIONS}")),
        ("generate_top_p_0", generate_setting("--config.generate.top_p=0", *GEN_FAST)),
        ("generate_top_p_1.5", generate_setting("--config.generate.top_p=1.5", *GEN_FAST)),
        ("generate_top_k_-1", generate_setting("--config.generate.top_k=-1", *GEN_FAST)),
        ("generate_stop_empty_string", generate_setting("--config.generate.stop=('',)", *GEN_FAST)),
        ("generate_batch_size_0", generate_setting("--config.generate.batch_size=0", *GEN_FAST)),
        ("generate_seed_2_pow_64", generate_setting(f"--config.generate.seed={2**64}", *GEN_FAST)),
        ("eval_override_max_length_0", reading_override("eval", "--config.data.max_length=0")),
        ("eval_override_eval_batch_size_0", reading_override("eval", "--config.train.eval_batch_size=0")),
        # training configs on a new workdir
        ("train_n_layer_0", train_config("--config.model.arch.n_layer=0", expect="any")),
        ("train_n_head_3", train_config("--config.model.arch.n_head=3")),
        ("train_n_embd_-8", train_config("--config.model.arch.n_embd=-8")),
        ("train_dtype_float16", train_config("--config.model.dtype=float16", expect="any")),
        ("train_warmup_ratio_nan", train_config("--config.train.warmup_ratio=nan")),
        ("train_sequence_map_to_o", train_config("--config.task=sequence", "--config.data.unknown_label=map_to_o",
                                                 data="seq")),
        ("train_lm_prompt_completion_max_length_2",
         train_config("--config.data.max_length=2", "--config.data.buckets=(2,)", base=TINY_LM, data="pc")),
        ("train_lm_prompt_completion_small_n_positions",
         train_config("--config.model.arch.n_positions=16", "--config.data.max_length=16", "--config.data.buckets=(16,)",
                      base=TINY_LM, data="pc", expect="any")),
        ("train_pos_tags", train_config(base=TINY_TOK, data="pos", expect="any", check=has_token_accuracy)),
        ("train_bad_data_source", train_bad_source),
        ("config_file_syntax_error", config_file("def get_config(:\n    pass\n")),
        ("config_file_get_config_raises", config_file("def get_config():\n    raise RuntimeError('broken config')\n")),
        ("config_file_no_get_config", config_file("X = 1\n")),
        ("config_file_get_config_returns_dict", config_file("def get_config():\n    return {'task': 'token'}\n")),
        # benchmark
        ("benchmark_generate_readme", benchmark(TINY_LM, "--benchmark=generate", "--config.generate.batch_size=2",
                                                "--config.generate.prompt_length=16", "--config.generate.max_new_tokens=8")),
        ("benchmark_generate_readme_defaults", benchmark(TINY_LM, "--benchmark=generate")),
        # signals
        ("predict_sigterm", predict_sigterm),
        ("generate_sigint", generate_signal(signal.SIGINT)),
        ("train_sigint_during_setup", train_sigint_setup),
        ("export_sigint", export_sigint),
        ("train_sigterm_then_resume", train_sigterm_then_resume),
    ]
    names = [n for n, _ in table]
    assert len(names) == len(set(names)), "duplicate case names"
    return table


# ------------------------------------------------------------------------------------------------


def run_case(sweep, name, fn) -> dict:
    t0 = time.monotonic()
    case = Case(name, sweep)
    try:
        fn(case)
        cls, reason, details = case.classify()
    except Exception as e:  # a harness bug: say so, never count it as gptjax's
        import traceback

        cls, reason, details = "harness-error", f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc()}
    return {"name": name, "class": cls, "reason": reason, "seconds": round(time.monotonic() - t0, 1),
            "commands": [{k: v for k, v in c.items() if k not in ("stdout_file",)} for c in case.commands],
            "wrong": case.wrong, **details}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="the gptjax checkout whose run.py is run")
    parser.add_argument("--out", required=True, help="fixtures, case directories and results.json go here")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    args = parser.parse_args()
    # Started in the background, this process may have SIGINT ignored, and its children would
    # inherit that: the Ctrl-C cases need it handled as a terminal would deliver it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    table = [(n, f) for n, f in cases() if not args.only or args.only in n]
    if args.list:
        print("\n".join(n for n, _ in table))
        return
    if not os.path.isfile(os.path.join(args.repo, "run.py")):
        sys.exit(f"--repo={args.repo}: no run.py there")
    sweep = Sweep(args.repo, args.out)
    os.makedirs(sweep.out, exist_ok=True)
    sweep.build_fixtures()
    if not args.only:
        shutil.rmtree(os.path.join(sweep.out, "cases"), ignore_errors=True)  # no stale cases of earlier sweeps
    t0 = time.monotonic()
    results = []
    for name, case in table:  # one at a time: the signal cases time their kills
        r = run_case(sweep, name, case)
        results.append(r)
        print(f"{r['name']:<52} {r['class']:<10} {r['seconds']:>6.1f}s  {r['reason'][:160]}", flush=True)
    counts = {k: sum(r["class"] == k for r in results) for k in (*CLASSES, "harness-error")}
    print(f"\n{'case':<52} class")
    for r in results:
        print(f"{r['name']:<52} {r['class']:<10} {r['reason'][:160]}")
    print("\ncounts: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v or k in CLASSES)
          + f"  ({len(results)} cases, {time.monotonic() - t0:.0f} s)")
    # A partial sweep (--only) writes beside the full one's results, not over them.
    name = "results.json" if not args.only else "results-only-" + re.sub(r"[^\w.-]", "_", args.only) + ".json"
    with open(os.path.join(sweep.out, name), "w", encoding="utf-8") as f:
        json.dump({"repo": sweep.repo, "only": args.only, "baselines": sweep.baselines, "counts": counts,
                   "cases": results}, f, indent=2)
    print(f"wrote {os.path.join(sweep.out, name)}")


if __name__ == "__main__":
    main()
