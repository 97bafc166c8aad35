"""Declaring a recipe for a service under test: a workdir, a secret, recipes.toml."""

from __future__ import annotations

from pathlib import Path

from assistant.config import Settings

SECRET = "hf_live_s3cr3t_value_0123456789"
SCRIPT = r"""
import argparse, json, os, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--max_iters", type=int, required=True)
p.add_argument("--lr", type=float, required=True)
p.add_argument("--out_dir", required=True)
p.add_argument("--sleep", type=float, default=0.02)
p.add_argument("--eval_interval", type=int, default=5)
p.add_argument("--resume", default=None)
args = p.parse_args()
out = Path(args.out_dir)
out.mkdir(parents=True, exist_ok=True)
start = 0
if args.resume:
    start = json.loads(Path(args.resume).read_text())["iter"]
    print(f"resuming from iter {start}", flush=True)
print(f"token chars: {len(os.environ.get('HF_TOKEN', ''))}", flush=True)
print(f"argv: {sys.argv[1:]}", flush=True)
for it in range(start + 1, args.max_iters + 1):
    loss = 3.0 / (1 + args.lr * it)
    print(f"iter {it}: loss {loss:.4f}, time 12.3ms", flush=True)
    if it % args.eval_interval == 0:
        print(f"step {it}: train loss {loss:.4f}, val loss {loss * 1.1:.4f}", flush=True)
        tmp = out / "ckpt.tmp"
        tmp.write_text(json.dumps({"iter": it}))
        os.replace(tmp, out / f"ckpt-{it:06d}.json")
    time.sleep(args.sleep)
"""


def recipes_toml(workdir: Path, image: str | None) -> str:
    image_line = f'image = "{image}"' if image else ""
    return f"""
[recipes.tinygpt]
summary = "a nanoGPT-shaped script of the user's own"
{image_line}
workdir = "{workdir}"
command = ["python3", "train.py", "--max_iters={{steps}}", "--lr={{lr}}",
           "--out_dir={{run_dir}}/out", "--sleep={{sleep}}"]
gpus = 0
time_limit = "10m"
key_metric = "val_loss"
secrets = {{ HF_TOKEN = "hf_token" }}

[recipes.tinygpt.params]
steps = {{ type = "int", default = 30, min = 1, max = 1000, help = "iterations" }}
lr = {{ type = "float", default = 0.05, min = 0.0001, max = 1.0 }}
sleep = {{ type = "float", default = 0.02, min = 0.0, max = 1.0 }}

[recipes.tinygpt.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+), time (?P<time_ms>[\\d.]+)ms']
metrics = ['step (?P<step>\\d+): train loss (?P<train_loss>[\\d.]+), val loss (?P<val_loss>[\\d.]+)']
total = "steps"

[recipes.tinygpt.resume]
checkpoints = "out/ckpt-*.json"
args = ["--resume={{checkpoint}}"]

[recipes.noresume]
summary = "the same script, with no way to resume"
{image_line}
workdir = "{workdir}"
command = ["python3", "train.py", "--max_iters={{steps}}", "--lr=0.1", "--out_dir={{run_dir}}/out",
           "--sleep=0.2"]
gpus = 0

[recipes.noresume.params]
steps = {{ type = "int", default = 100, min = 1, max = 1000 }}

[recipes.noresume.progress]
progress = ['iter (?P<step>\\d+): loss (?P<loss>[\\d.]+)']
total = "steps"
"""


def declare(settings: Settings, tmp_path: Path, image: str | None) -> Settings:
    root = tmp_path / "code"
    workdir = root / "tinygpt"
    workdir.mkdir(parents=True)
    (workdir / "train.py").write_text(SCRIPT)
    for path in (root, workdir):  # a container's user must read it, as on a real host
        path.chmod(0o755)
    (workdir / "train.py").chmod(0o644)
    settings.assistant_home.mkdir(parents=True, exist_ok=True)
    (settings.assistant_home / "recipes.toml").write_text(recipes_toml(workdir, image))
    secrets = settings.assistant_home / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "hf_token").write_text(SECRET + "\n")
    (secrets / "hf_token").chmod(0o600)
    return settings.model_copy(update={"recipe_roots": (root,)})
