"""The ``segexpr`` console command.

``segexpr fit|validate|test|predict --config FILE`` is Lightning's own ``LightningCLI`` (as :class:`SegexprCLI`);
the remaining subcommands (``edit``, ``transfer``, ``evaluate``, ``export-synthetic``, ``demo``,
``upgrade-checkpoint``) are small argparse programs dispatched by name. This module stays thin and imports
neither torch nor Lightning until a command runs, so ``segexpr --help`` answers at once.

Options every command accepts (taken out before the command sees its arguments):

* ``--threads N``: torch CPU threads (default from the console: the cores this process may use, never the
  machine's load, so the same command on the same machine gives the same weights, see :func:`default_threads`;
  ``main([...])`` called from Python leaves torch's setting alone unless ``--threads`` is given); one line on
  stderr says how many are used and why.
* ``--debug``: show the full traceback of an error instead of one line ``segexpr <command>: <message>``.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

#: Lightning's subcommands: name -> one-line description.
LIGHTNING_COMMANDS = {
    "fit": "train a model from a YAML config (Lightning's CLI; e.g. --config examples/configs/synthetic.yaml)",
    "validate": "run the validation loop of a config on a checkpoint (--ckpt_path)",
    "test": "run the test loop of a config on a checkpoint (--ckpt_path)",
    "predict": "run the predict loop of a config on a checkpoint (--ckpt_path)",
}

#: subcommand -> ("module:function" taking ``argv`` (the arguments after the subcommand), one-line description).
EXTRA_COMMAND_INFO = {
    "edit": ("segexpr.cli.edit:edit_main", "set the expression of photos by label or AU vector"),
    "transfer": ("segexpr.cli.edit:transfer_main", "copy the expression of a reference photo onto photos"),
    "evaluate": ("segexpr.cli.evaluate:main", "score a JointModule checkpoint (markdown table + JSON)"),
    "export-synthetic": ("segexpr.data.export:main",
                         "write SynthFACS in a real dataset's layout (CelebAMask-HQ, AffectNet, RaFD)"),
    "demo": ("segexpr.demo:main", "serve the expression-editing browser demo (needs segexpr[demo])"),
    "upgrade-checkpoint": ("segexpr.cli.upgrade:main", "rewrite a segexpr 0.1 JointModule checkpoint for today's code"),
}
#: subcommand -> "module:function" (kept for callers of the old table).
EXTRA_COMMANDS = {name: target for name, (target, _) in EXTRA_COMMAND_INFO.items()}
#: commands that run models: they get the torch thread setting.
TORCH_COMMANDS = set(LIGHTNING_COMMANDS) | {"edit", "transfer", "evaluate", "demo"}


class UserError(Exception):
    """A mistake in the command line (bad option value, file in the way...): reported as one line, exit code 2."""


#: Exceptions reported as ``segexpr <command>: <message>`` (exit code 1) instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, FileExistsError,
                                                 NotADirectoryError, IsADirectoryError, PermissionError, ImportError)


def usage() -> str:
    """The text of ``segexpr --help``: every command with its one-line description."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *EXTRA_COMMAND_INFO])) + 2
    lines = ["usage: segexpr <command> [options]   (segexpr <command> --help for a command's options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}}{text}" for name, (_, text) in EXTRA_COMMAND_INFO.items()]
    lines += ["", "options of every command:",
              f"  {'--threads N':<{width}}torch CPU threads (default: the cores this process may use)",
              f"  {'--debug':<{width}}show tracebacks instead of one-line errors"]
    return "\n".join(lines)


def default_threads() -> tuple[int, str]:
    """Torch threads to use and why: the cores this process may use (its CPU affinity, else the machine's count),
    capped by torch's own default (physical cores, or ``OMP_NUM_THREADS``, which DDP's launcher sets per rank),
    at least 1.

    Never the machine's load: the thread count changes the order of float sums and so the trained weights, and
    the same command on the same machine must give the same weights whether the machine is idle or busy.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch_default = torch.get_num_threads()
    threads = max(1, min(cores, torch_default))
    return threads, (f"{cores} core(s) this process may use, torch's default {torch_default}; not the load, so "
                     "results repeat; --threads N to override")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` and restore the previous count after it (benchmark
    scripts whose ``main()`` the test suite calls in-process)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def launched_rank() -> int | None:
    """This process's rank as set by a multi-process launcher (Lightning's DDP launcher sets ``LOCAL_RANK`` in the
    ranks it starts; torchrun ``RANK``; SLURM ``SLURM_PROCID``), read as Lightning reads it; None if none is set."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def set_threads(requested: int | None, export: bool = False) -> int:
    """Set torch's CPU threads (``requested``, else :func:`default_threads`) and print one line saying why.

    The line is printed by rank zero only (a DDP rank that Lightning re-ran from the same command line sets the
    same threads silently). ``export=True`` (the console with ``--threads``) also sets ``OMP_NUM_THREADS``, so that
    Lightning's DDP launcher, which otherwise gives every rank cores // processes threads, keeps the count asked for.
    """
    import torch

    if requested is not None:
        threads, why = requested, "--threads"
    else:
        threads, why = default_threads()
    torch.set_num_threads(threads)
    if export:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if launched_rank() in (None, 0):
        print(f"segexpr: using {threads} torch thread(s) ({why})", file=sys.stderr)
    return threads


def _pop_global_options(argv: list[str]) -> tuple[list[str], int | None, bool]:
    """Remove ``--threads N`` / ``--threads=N`` and ``--debug`` from ``argv``."""
    rest: list[str] = []
    threads: int | None = None
    debug = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--debug":
            debug = True
        elif arg == "--threads" or arg.startswith("--threads="):
            if arg == "--threads":
                if i + 1 >= len(argv):
                    raise UserError("--threads needs a number")
                value, i = argv[i + 1], i + 1
            else:
                value = arg.split("=", 1)[1]
            try:
                threads = int(value)
            except ValueError:
                raise UserError(f"--threads must be a whole number, got {value!r}") from None
            if threads < 1:
                raise UserError(f"--threads must be >= 1, got {threads}")
        else:
            rest.append(arg)
        i += 1
    return rest, threads, debug


def _segexpr_cli_class():
    """:class:`LightningCLI` with segexpr's run folders (defined on first use: Lightning is imported then)."""
    from pytorch_lightning.cli import LightningCLI

    class SegexprCLI(LightningCLI):
        """LightningCLI that, before ``fit``, points ``<run root>/latest`` at the run's versioned folder.

        With the CSVLogger of ``synthetic.yaml`` (``save_dir: outputs/synthetic``, ``name: ""``), every fit writes
        into its own ``outputs/synthetic/version_N/`` (metrics.csv, ``checkpoints/``, ``result.png``: the
        ModelCheckpoint and ResultImage default to the logger's folder), and ``outputs/synthetic/latest`` is a
        symbolic link to the newest one, so ``outputs/synthetic/latest/checkpoints/last.ckpt`` is always the
        newest run's last checkpoint. Where symbolic links are not allowed, ``latest.txt`` names the folder.
        """

        def __init__(self, *args, relaunch_argv: Sequence[str] | None = None,
                     exit_after_error_s: float | None = None, **kwargs) -> None:
            self.relaunch_argv = list(relaunch_argv) if relaunch_argv is not None else None
            self.exit_after_error_s = exit_after_error_s
            super().__init__(*args, **kwargs)

        def before_instantiate_classes(self) -> None:
            # parsed: from here on sys.argv is the command line Lightning's DDP launcher re-runs for the other ranks
            if self.relaunch_argv is not None:
                sys.argv = list(self.relaunch_argv)

        def instantiate_trainer(self, **kwargs):
            # under DDP, an exception on one rank stops every rank (a no-op in a single process)
            from segexpr.callbacks import StopAllRanksOnError

            trainer = super().instantiate_trainer(**kwargs)
            if not any(isinstance(callback, StopAllRanksOnError) for callback in trainer.callbacks):
                trainer.callbacks.insert(0, StopAllRanksOnError(exit_after_s=self.exit_after_error_s))
            return trainer

        def before_fit(self) -> None:
            update_latest_link(self.trainer)

    return SegexprCLI


def update_latest_link(trainer) -> Path | None:
    """Point ``<log_dir>/../latest`` at the trainer's versioned log folder (global rank zero; else nothing)."""
    if trainer.global_rank != 0 or trainer.logger is None or trainer.log_dir is None:
        return None
    log_dir = Path(trainer.log_dir)
    if not log_dir.name.startswith("version_"):
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    link = log_dir.parent / "latest"
    try:
        if link.is_symlink():
            link.unlink()
        if link.exists():  # a real file or folder of the user's: leave it
            return None
        link.symlink_to(log_dir.name, target_is_directory=True)
    except OSError:
        (log_dir.parent / "latest.txt").write_text(f"{log_dir.name}\n")
        return log_dir.parent / "latest.txt"
    return link


def lightning_cli(args: Sequence[str] | None = None, run: bool = True, relaunch_argv: Sequence[str] | None = None,
                  exit_after_error_s: float | None = None):
    """Build Lightning's CLI over every segexpr LightningModule and DataModule (subclass mode).

    ``args=None`` reads ``sys.argv`` (the console); a list is for calls from Python (tests). ``relaunch_argv``:
    what ``sys.argv`` becomes once the arguments are parsed (the command line DDP re-runs for the other ranks).
    ``exit_after_error_s``: under DDP, a rank ends itself that many seconds after an exception even if its
    teardown hangs (:class:`segexpr.callbacks.StopAllRanksOnError`; the console).
    """
    import pytorch_lightning as pl

    return _segexpr_cli_class()(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        run=run,
        save_config_kwargs={"overwrite": True},
        relaunch_argv=relaunch_argv,
        exit_after_error_s=exit_after_error_s,
    )


#: seconds after an exception on a DDP rank (console) after which the rank ends itself even if tearing down hangs
EXIT_AFTER_ERROR_S = 30.0


def _run_lightning(argv: list[str], console: bool = False) -> int:
    """LightningCLI on ``argv`` read as the process's own command line (no args/sys.argv warning).

    Only while LightningCLI parses is ``sys.argv`` ``["segexpr", *argv]``; while the command runs it is the
    caller's own again, because Lightning's DDP launcher starts the other ranks by re-running it
    (``python <abspath of sys.argv[0]> <sys.argv[1:]>``, or ``python -m <__main__'s module> <sys.argv[1:]>``): from
    the console that is the ``segexpr`` script or ``python -m segexpr`` with the whole command line, global options
    included, from any working directory; from Python, the caller's script, as for any Lightning Trainer.
    """
    saved = sys.argv
    sys.argv = ["segexpr", *argv]
    try:
        lightning_cli(None, relaunch_argv=saved, exit_after_error_s=EXIT_AFTER_ERROR_S if console else None)
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``segexpr`` console command; returns the exit code (0 ok, 1 failed, 2 usage error)."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    debug = "--debug" in argv
    try:
        if command is None or command in ("-h", "--help", "help"):
            print(usage(), file=sys.stdout if command else sys.stderr)
            return 0 if command else 2
        known = [*LIGHTNING_COMMANDS, *EXTRA_COMMAND_INFO]
        if command not in known:
            close = difflib.get_close_matches(command, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; see segexpr --help"
            print(f"segexpr: unknown command '{command}'{hint}", file=sys.stderr)
            return 2
        rest, threads, debug = _pop_global_options(argv[1:])
        # threads: from the console always (default: the free cores); from Python (tests) only when asked
        if command in TORCH_COMMANDS and (console or threads is not None) and not ({"-h", "--help"} & set(rest)):
            set_threads(threads, export=console and threads is not None and command in LIGHTNING_COMMANDS)
        if command in LIGHTNING_COMMANDS:
            return _run_lightning([command, *rest], console=console)
        module_name, func_name = EXTRA_COMMANDS[command].split(":")
        return int(getattr(importlib.import_module(module_name), func_name)(rest) or 0)
    except BaseException as err:
        if console and getattr(err, "segexpr_rank", None) is not None:
            _end_failed_rank(err, command, debug)  # a DDP rank's error (StopAllRanksOnError): report, exit now
        if debug or not isinstance(err, USER_ERRORS):
            raise
        print(f"segexpr {command}: {_one_line(err)}" if command else f"segexpr: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, UserError) else 1


def _one_line(err: BaseException) -> str:
    message = str(err) or type(err).__name__
    if isinstance(err, ImportError) and not str(err):
        message = f"missing package: {err.name}"
    return message


def _end_failed_rank(err: BaseException, command: str | None, debug: bool) -> None:
    """Report the exception of a DDP rank once and end the process at once (``os._exit``: a Python shutdown can
    hang in the process group's destructor or a library's thread while the other ranks wait for this one)."""
    rank = err.segexpr_rank  # type: ignore[attr-defined]
    after = getattr(err, "segexpr_after_rank", None)
    code = 1
    if isinstance(err, SystemExit):
        code = err.code if isinstance(err.code, int) else 1
    elif after is not None:  # a rank this one started failed first: its error is above; one line here
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"segexpr {command}: rank {rank} stopped after rank {after[0]} failed (exit code {after[1]}; its error "
              f"is above): {type(err).__name__}: {first}", file=sys.stderr)
    elif isinstance(err, USER_ERRORS) and not debug:
        print(f"segexpr {command} (rank {rank}): {_one_line(err)}", file=sys.stderr)
        code = 2 if isinstance(err, UserError) else 1
    else:
        sys.excepthook(type(err), err, err.__traceback__)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
