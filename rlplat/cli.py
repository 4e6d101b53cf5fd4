"""`rlplat train|sft|eval|data|model|bench ...`. Bad input exits with status 2 and one line naming the problem."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    if argv[:1] == ["bench"]:  # benchmarks parse their own flags
        return _bench(argv[1:], parser)
    args, extra = parser.parse_known_args(argv)
    # `train SPEC a.b=1 --dry-run c.d=2`: overrides after a flag arrive here; anything else is an error.
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlplat", description="RL post-training for language models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  rlplat model tiny models/tiny                        write the demo's tiny model\n"
               "  rlplat model tiny models/chat --tokenizer bpe        a tiny chat model (byte-level BPE, ChatML)\n"
               "  rlplat data countdown data/countdown --n 2000        write data/countdown/{train,test}.jsonl\n"
               "  rlplat data countdown data/countdown --sft           the same rows with a `messages` column\n"
               "  rlplat sft configs/sft_countdown.yaml                SFT warm start: OUTPUT/sft_model\n"
               "  rlplat train configs/demo.yaml experiment.num_steps=20\n"
               "  rlplat train configs/demo.yaml --dry-run             print the resolved spec and placement\n"
               "  rlplat eval configs/demo.yaml --checkpoint outputs/demo/checkpoints\n"
               "                                                       evaluate the latest checkpoint in MLflow\n"
               "  rlplat bench                                         list the benchmarks\n"
               "  ray job submit --working-dir . -- python -m rlplat train SPEC   (on a Ray cluster: docs/deploy.md)\n"
               "\n"
               "`rlplat COMMAND --help` lists a command's options.")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="run an experiment spec (YAML)",
                       description="Run an experiment spec: on the Ray cluster this process can attach to "
                                   "(ray job submit, RAY_ADDRESS, cluster.address), else on a local Ray instance. "
                                   "Bad input exits with status 2 before any worker starts.")
    t.add_argument("spec", help="path to the YAML experiment spec")
    t.add_argument("overrides", nargs="*", help="spec overrides as key.path=value, e.g. experiment.num_steps=5")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved spec and the GPU placement plan, check the cluster has the GPUs, and exit")
    t.add_argument("--assume-gpus", type=float, metavar="N",
                   help="with --dry-run: plan for a cluster of N GPUs instead of the one this machine can reach")
    t.add_argument("--assume-nodes", type=int, metavar="K",
                   help="with --dry-run --assume-gpus N: the N GPUs sit on K nodes (N/K each); the plan shows which "
                        "node gets which role")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the output directory (same MLflow run)")
    t.add_argument("--start-over", action="store_true",
                   help="move an earlier run's checkpoints in the output directory aside "
                        "(checkpoints.earlier-TIME) and start at step 1")
    t.set_defaults(func=_train)

    f = sub.add_parser("sft", help="supervised fine-tuning on chat conversations (the warm start before RL)",
                       description="Train the spec's model with cross-entropy on the assistant tokens of the "
                                   "conversations in sft.train_files (in this process, no Ray), log to the spec's "
                                   "MLflow run, and save a model directory (sft.save_dir, default "
                                   "OUTPUT/sft_model) that `rlplat train` can start from as model.path. Bad input "
                                   "exits with status 2 before the model loads.")
    f.add_argument("spec", help="path to the YAML experiment spec (its sft:, model:, learner: sections)")
    f.add_argument("overrides", nargs="*", help="spec overrides as key.path=value, e.g. sft.num_steps=50")
    f.add_argument("--no-progress", action="store_true", help="print no progress lines")
    f.add_argument("--resume", action="store_true",
                   help="continue from the latest SFT checkpoint in OUTPUT/sft_checkpoints (same MLflow run)")
    f.add_argument("--start-over", action="store_true",
                   help="move an earlier SFT run's checkpoints aside and start at step 1")
    f.set_defaults(func=_sft)

    e = sub.add_parser("eval", help="evaluate a saved policy and log an MLflow evaluation run",
                       description="Serve a saved policy on the spec's rollout engines, run the spec's evaluation "
                                   "(greedy eval split or env episodes, plus sampled responses scored by the spec's "
                                   "reward) and log it as an MLflow run nested under the training run.")
    e.add_argument("spec", help="path to the YAML experiment spec the policy was trained with")
    e.add_argument("overrides", nargs="*", help="spec overrides as key.path=value")
    e.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint (OUTPUT/checkpoints/step_N, or OUTPUT/checkpoints for the latest), a saved "
                        "policy (OUTPUT/final_model) or a LoRA adapter directory")
    e.add_argument("--num-samples", type=int, default=4, metavar="K",
                   help="sampled responses per eval prompt for eval/sampled_* (default: %(default)s)")
    e.set_defaults(func=_eval)

    m = sub.add_parser("model", help="model utilities: rlplat model tiny OUT_DIR",
                       description="Model utilities. `rlplat model tiny --help` lists its options.")
    msub = m.add_subparsers(dest="model_command")
    tiny = msub.add_parser("tiny", help="write a tiny random Qwen2 model + char tokenizer to OUT_DIR",
                           description="Write a tiny random-weight Qwen2 model and a character tokenizer to OUT_DIR "
                                       "(a Hugging Face model directory to point model.path at).")
    tiny.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if missing)")
    tiny.add_argument("--hidden-size", type=int, default=128,
                      help="hidden size; hidden-size / num-heads must be >= 32 (default: %(default)s)")
    tiny.add_argument("--num-layers", type=int, default=2, help="decoder layers (default: %(default)s)")
    tiny.add_argument("--num-heads", type=int, default=2,
                      help="attention heads, also used as KV heads (default: %(default)s)")
    tiny.add_argument("--intermediate-size", type=int, default=256,
                      help="MLP intermediate size (default: %(default)s)")
    tiny.add_argument("--context-length", type=int, default=None,
                      help="max_position_embeddings: prompt + response tokens the model serves "
                           "(default: 128 with the char tokenizer, 512 with bpe)")
    tiny.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                      help="char: one token per character, no chat template (digit tasks); bpe: byte-level BPE "
                           "trained on --corpus with a ChatML chat template (default: %(default)s)")
    tiny.add_argument("--corpus", metavar="FILE",
                      help="with --tokenizer bpe: a text file (one document per line) to train the BPE on "
                           "(default: text of the built-in task generators)")
    tiny.add_argument("--vocab-size", type=int, default=512,
                      help="with --tokenizer bpe: the most tokens the BPE learns (default: %(default)s)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    tiny.set_defaults(func=_model_tiny)

    d = sub.add_parser("data", help="write a task's train/test files: rlplat data countdown|arithmetic|digits OUT",
                       description="Generate a task's train and test splits offline as OUT/train.<fmt> and "
                                   "OUT/test.<fmt> (the files data.train_files / data.eval_files point at).")
    dsub = d.add_subparsers(dest="data_command")
    for name, what in (("countdown", "TinyZero countdown: reach a target with the given numbers (nums, target)"),
                       ("arithmetic", "GSM8K-like word problems (question, answer ending in '#### N')"),
                       ("digits", "the built-in digit tasks (prompt, answer)"),
                       ("tools", "large-number arithmetic for the calculator tool (prompt, answer, expression); "
                                 "--sft adds tool-call traces, and corpus.txt for `rlplat model tiny --corpus`")):
        g = dsub.add_parser(name, help=what, description=f"Write {what}.")
        g.add_argument("out_dir", metavar="OUT", help="directory to write train.<fmt> and test.<fmt> into")
        g.add_argument("--n", type=int, default=1000, help="train rows (default: %(default)s)")
        g.add_argument("--n-test", type=int, default=100, help="test rows (default: %(default)s)")
        g.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
        g.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                       help="file format (default: %(default)s)")
        g.add_argument("--sft", action="store_true",
                       help="add a `messages` column: the prompt and the correct answer as a chat conversation "
                            "(sft.train_files for `rlplat sft`)")
        if name == "tools":
            g.add_argument("--tool", choices=("calculator", "python"), default="calculator",
                           help="the tool the --sft traces call, and whose schema they show (default: %(default)s)")
        if name == "digits":
            g.add_argument("--task", choices=("copy", "reverse", "add"), default="copy",
                           help="digit task (default: %(default)s)")
            g.add_argument("--num-digits", type=int, default=4, help="digits per number (default: %(default)s)")
        g.set_defaults(func=_data)

    sub.add_parser("bench", help="run a benchmark: rlplat bench NAME [--help]")
    return p


def _train(args: argparse.Namespace) -> int:
    from rlplat.config import ConfigError, dump_yaml, load_config

    try:
        cfg = load_config(args.spec, args.overrides)
        if args.dry_run:
            print(dump_yaml(cfg), end="")
            return _print_plan(cfg, args.assume_gpus, args.assume_nodes)
        from rlplat.driver import loop, run_state

        run_state.preflight(cfg)
        if args.resume and args.start_over:
            raise ConfigError("--resume and --start-over exclude each other")
        if args.resume:
            run_state.find_checkpoint(cfg, required=True)
        if args.start_over:
            from rlplat import checkpoint as ck

            moved = ck.move_aside(ck.checkpoint_root(cfg.output_dir))
            if moved:
                print(f"moved the earlier checkpoints to {moved}")
    except ConfigError as e:
        return _bad_input(e)
    _quiet_logs()
    try:
        result = loop.train(cfg, progress=not args.no_progress, resume=args.resume)
    except ConfigError as e:  # found once attached to the cluster: too few GPUs for the placement
        return _bad_input(e)
    except Exception as e:  # the run started and failed: one line, the traceback in a file
        return _run_failed(e, cfg.output_dir, resume_hint=lambda: run_state.resume_hint(cfg),
                           memory_advice=lambda: run_state.out_of_memory_advice(cfg))
    rewards = [v for _, v in result.history.get("rollout/reward_mean", [])]
    if rewards:
        k = min(10, len(rewards))
        print(f"reward mean: first {k} steps {sum(rewards[:k]) / k:.3f} -> last {k} steps {sum(rewards[-k:]) / k:.3f}")
    for key in ("eval/exact_match", "eval/digit_accuracy"):
        if key in result.history:
            print(f"{key}: {result.history[key][0][1]:.3f} -> {result.history[key][-1][1]:.3f}")
    print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    print(f"view it: mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1 --port 5000")
    return 0


def _sft(args: argparse.Namespace) -> int:
    from rlplat.config import ConfigError, load_config

    try:
        cfg = load_config(args.spec, args.overrides)
        if args.resume and args.start_over:
            raise ConfigError("--resume and --start-over exclude each other")
        from rlplat.driver import sft

        if args.start_over:
            from rlplat import checkpoint as ck

            moved = ck.move_aside(sft.checkpoint_root(cfg))
            if moved:
                print(f"moved the earlier SFT checkpoints to {moved}")
        inputs = sft.preflight(cfg, resume=args.resume)
        _quiet_logs()
        result = sft.train_sft(cfg, resume=args.resume, inputs=inputs, report=None if args.no_progress else print)
    except ConfigError as e:
        return _bad_input(e)
    for key in ("loss/sft", "eval/sft_loss"):
        if key in result.history:
            print(f"{key}: {result.history[key][0][1]:.3f} -> {result.history[key][-1][1]:.3f}")
    print(f"saved the model to {result.model_dir} (use it as model.path for `rlplat train`)")
    print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rlplat.config import ConfigError, load_config

    try:
        if args.num_samples < 1:
            raise ConfigError("--num-samples must be >= 1")
        cfg = load_config(args.spec, args.overrides)
        from rlplat.driver import evaluation, run_state
        from rlplat.evaluate import find_source

        run_state.preflight(cfg)
        find_source(args.checkpoint)
        _quiet_logs()
        result = evaluation.evaluate_checkpoint(cfg, args.checkpoint, num_samples=args.num_samples)
    except ConfigError as e:
        return _bad_input(e)
    except Exception as e:  # the evaluation started and failed: one line, the traceback in a file
        return _run_failed(e, cfg.output_dir)
    for key, points in sorted(result.history.items()):
        print(f"{key}: {points[-1][1]:.4f}")
    print(f"MLflow evaluation run {result.run_id} in {result.tracking_uri}")
    return 0


def _print_plan(cfg, assume_gpus: float | None, assume_nodes: int | None = None) -> int:
    """The placement plan for the cluster `train` would use (or `assume_gpus` on `assume_nodes`), then the GPU-count
    check."""
    from rlplat.config import ConfigError
    from rlplat.placement import check_gpus, plan_placement

    if assume_nodes is not None and (assume_gpus is None or assume_nodes < 1 or assume_gpus % assume_nodes):
        raise ConfigError(f"--assume-nodes {assume_nodes} needs --assume-gpus with a multiple of it "
                          f"(got {assume_gpus}): every node has the same number of GPUs")
    available, where = (assume_gpus, "the assumed cluster") if assume_gpus is not None else _reachable_gpus(cfg)
    per_node = int(assume_gpus // assume_nodes) if assume_nodes and assume_gpus else None
    plan = plan_placement(cfg, available, per_node)
    print(plan.describe())
    check_gpus(plan, available, where)  # ConfigError -> exit 2 with both numbers
    return 0


def _reachable_gpus(cfg) -> tuple[float, str]:
    """GPUs of the Ray cluster `train` would attach to (cluster.address), else of this machine."""
    from rlplat.actors.placement_group import cluster_gpu_count
    from rlplat.config import ConfigError
    from rlplat.driver.workers import deliberate_cluster
    from rlplat.placement import local_gpu_count

    address = cfg.cluster.address
    if address == "local":
        return local_gpu_count(), "this machine"
    if address == "auto" and not deliberate_cluster():  # as `train`: never another run's private instance
        return local_gpu_count(), "this machine (no Ray cluster was started on purpose; `train` would start its own)"
    import ray

    if ray.is_initialized():  # already attached (a test session, a notebook): ask that cluster
        return cluster_gpu_count(), "the attached Ray cluster"
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except ConnectionError:
        if address != "auto":
            raise ConfigError(f"cluster.address: no Ray cluster answers at {address!r}") from None
        return local_gpu_count(), "this machine (no Ray cluster is running; `train` would start a local one)"
    try:
        return cluster_gpu_count(), f"the Ray cluster at {ray.get_runtime_context().gcs_address}"
    finally:
        ray.shutdown()


def _model_tiny(args: argparse.Namespace) -> int:
    from rlplat.models import TinyModelShape, read_corpus, write_tiny_model

    shape = TinyModelShape(hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                           num_kv_heads=args.num_heads, intermediate_size=args.intermediate_size,
                           max_position_embeddings=args.context_length or (512 if args.tokenizer == "bpe" else 128))
    try:
        if args.corpus and args.tokenizer != "bpe":
            raise ValueError("--corpus trains a BPE tokenizer: add --tokenizer bpe")
        corpus = read_corpus(args.corpus) if args.corpus else None
        out = write_tiny_model(args.out_dir, shape=shape, seed=args.seed, tokenizer=args.tokenizer, corpus=corpus,
                               vocab_size=args.vocab_size)
    except ValueError as e:
        return _bad_input(e)
    print(f"wrote tiny model to {out}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from rlplat.data import generators

    try:
        if args.data_command == "digits":
            from rlplat.envs.tasks import make_split

            if args.n < 1 or args.n_test < 0:
                raise ValueError(f"need --n >= 1 and --n-test >= 0, got {args.n} and {args.n_test}")
            splits = {name: generators.records_from_problems(make_split(
                args.task, num_digits=args.num_digits, num_prompts=num, seed=args.seed, split=split)) if num else []
                for name, split, num in (("train", "train", args.n), ("test", "eval", args.n_test))}
        elif args.data_command == "tools":
            return _data_tools(args)
        else:
            make = {"countdown": generators.countdown_splits, "arithmetic": generators.arithmetic_splits}
            splits = make[args.data_command](num_train=args.n, num_test=args.n_test, seed=args.seed)
        if args.sft:
            prompt_key, response_key = generators.SFT_COLUMNS[args.data_command]
            splits = {name: generators.with_messages(recs, prompt_key=prompt_key, response_key=response_key)
                      for name, recs in splits.items()}
        paths = generators.write_splits(args.out_dir, splits, fmt=args.format)
    except ValueError as e:
        return _bad_input(e)
    for path, name in zip(paths, [k for k, v in splits.items() if v], strict=True):
        print(f"wrote {len(splits[name])} rows to {path}")
    return 0


def _data_tools(args: argparse.Namespace) -> int:
    """`rlplat data tools`: rlplat.data.tool_tasks with the schema of --tool; also writes OUT/corpus.txt."""
    from rlplat.agents.tools import calculator_tool, python_tool
    from rlplat.data import generators, tool_tasks

    schemas = [(calculator_tool() if args.tool == "calculator" else python_tool()).schema()]
    try:
        splits = tool_tasks.tool_splits(num_train=args.n, num_test=args.n_test, seed=args.seed, schemas=schemas,
                                        sft=args.sft, tool=args.tool)
        paths = generators.write_splits(args.out_dir, splits, fmt=args.format)
    except ValueError as e:
        return _bad_input(e)
    corpus = Path(args.out_dir) / "corpus.txt"
    corpus.write_text("\n".join(tool_tasks.corpus_lines(splits["train"], schemas, args.tool)) + "\n", encoding="utf-8")
    for path in paths:
        print(f"wrote {path}")
    print(f"wrote {corpus} (BPE text for `rlplat model tiny --tokenizer bpe --corpus {corpus}`)")
    return 0


def _bench(argv: list[str], parser: argparse.ArgumentParser) -> int:
    """Run `rlplat.bench.NAME.main`, offline (before anything imports transformers), with its closing JSON line
    printed after Ray has shut down: forwarded actor logs arrive late and must not follow it."""
    from rlplat import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV)
    if not argv or argv[0].startswith("-"):
        import pkgutil

        import rlplat.bench as pkg

        names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name != "common"]
        print(f"usage: rlplat bench NAME [args]; NAME is one of: {', '.join(sorted(names))}")
        return EXIT_BAD_INPUT if not argv else 0
    try:
        module = importlib.import_module(f"rlplat.bench.{argv[0]}")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("rlplat.bench."):  # the bench exists but imports something missing
            raise
        print(f"rlplat: error: unknown benchmark {argv[0]!r}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from rlplat.bench.common import headline_last
    from rlplat.config import ConfigError

    def stop_ray() -> None:  # ray.shutdown() joins the thread that prints forwarded actor logs
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()

    try:
        return headline_last(lambda: int(module.main(argv[1:]) or 0), stop_ray)
    except ConfigError as e:  # a missing model, a bad spec: one line, exit 2
        return _bad_input(e)


def _bad_input(error: Exception) -> int:
    """One line naming the problem on stderr; the exit status of bad input."""
    print(f"rlplat: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT


EXIT_RUN_FAILED = 1
# Workers methods (rlplat/driver/workers.py) -> the phase a dead actor interrupted, for the one-line message.
_PHASES = {"save_learner_state": "checkpoint save", "load_learner_state": "checkpoint load", "train": "train step",
           "sync": "weight sync", "generate": "generation", "score": "reward scoring", "save_model": "final model save",
           "verify": "final weight check", "recover": "rollout restart", "start": "start-up"}


def _run_failed(error: Exception, output_dir: Path, resume_hint: Callable[[], str] | None = None,
                memory_advice: Callable[[], str] | None = None) -> int:
    """A run (or evaluation) that started and failed: one line on stderr naming what failed, where to resume and
    where the traceback is; exit 2 for a user's reward function that failed (its message names it), else 1.
    Out of GPU memory: the first line of torch's message and `memory_advice()`, what to change in the spec."""
    import torch

    from rlplat.rewards.registry import RewardError

    log_file = _write_traceback(error, output_dir)
    message = " ".join(str(error).split()) or type(error).__name__
    causes = _causes(error)
    died = _dead_actor(error)
    oom = next((c for c in causes if isinstance(c, torch.OutOfMemoryError)), None)
    if died is not None:
        actor, phase = died
        message = f"{actor} died during {phase}" + (f"; {resume_hint()}" if resume_hint else "")
    elif oom is not None and memory_advice is not None:
        first = str(getattr(oom, "cause", None) or oom).strip().splitlines()[-1]
        message = f"out of GPU memory ({first.split(' Including')[0]}): {memory_advice()}" + (
            f"; {resume_hint()}" if resume_hint else "")
    where = f" (traceback: {log_file})" if log_file else ""
    print(f"rlplat: error: {message}{where}", file=sys.stderr)
    return EXIT_BAD_INPUT if any(isinstance(c, RewardError) for c in causes) else EXIT_RUN_FAILED


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what caused it: `__cause__` (the async producer re-raises a reward's failure as its cause) and a
    Ray task error's remote exception (`.cause`)."""
    causes: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or any(e is c for c in causes):
            continue
        causes.append(e)
        remote = getattr(e, "cause", None)
        todo += [e.__cause__, remote if isinstance(remote, BaseException) else None]
    return causes


def _dead_actor(error: BaseException) -> tuple[str, str] | None:
    """(actor, phase) when `error` is a Ray actor that died (not already explained by the driver), else None."""
    import re
    import traceback

    from ray.exceptions import RayActorError

    if not isinstance(error, RayActorError):
        return None
    found = re.search(r"class_name: (\S+)", str(error))  # a qualified name: module.<locals>.LearnerActor
    actor = f"a Ray actor ({found.group(1).rpartition('.')[2]})" if found else "a Ray actor"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.endswith("rlplat/driver/workers.py")]
    phase = next((_PHASES[f.name] for f in reversed(frames) if f.name in _PHASES), "the run")
    return actor, phase


def _write_traceback(error: BaseException, output_dir: Path) -> Path | None:
    """The full traceback in OUTPUT/logs/error.log (None if it cannot be written)."""
    import traceback

    path = Path(output_dir) / "logs" / "error.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(error)))
    except OSError:
        return None
    return path


def _quiet_logs() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
