"""The ``rawgpu`` command: ``rawgpu info``, ``rawgpu kernels`` and ``rawgpu train``.

Every failure a user can cause (bad flags, bad data, no GPU, a checkpoint of another network)
ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import math
import os
import signal
import sys

from rawgpu.signals import EXITS, Signals

# argparse and everything heavier load inside the functions, after run() has put the signal
# handler in place: a Ctrl-C while they load is then one line and status 130, not a traceback.

DATASETS = ("mnist", "fashion-mnist", "cifar10", "sample")  # rawgpu.data.DATASETS (kept here: no NumPy import to build the parser)
DEVICES = ("auto", "cuda", "sim", "numpy")
INTERRUPTED = EXITS[signal.SIGINT][0]  # the exit status after Ctrl-C (128 + SIGINT), as shells report it
MAX_SIZE = 2**31 - 1  # the largest --hidden or --batch-size: the kernels index with 32-bit integers


def number_arg(kind, *, minimum, inclusive=True, maximum=None):
    """An argparse type: a finite number of ``kind`` above (or at) ``minimum`` and at most
    ``maximum`` where given (the benches use it too)."""

    import argparse

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} must be {'>=' if inclusive else '>'} {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text} must be <= {maximum}")
        return value

    return parse


def widths_arg(text):
    """An argparse type: three comma-separated whole numbers >= 1, the CNN's conv widths."""
    import argparse

    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or not all(1 <= int(p) <= MAX_SIZE for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not three conv widths: give three whole numbers from 1 to {MAX_SIZE}, like 32,32,64")
    return tuple(int(p) for p in parts)


def _version() -> str:
    from rawgpu import __version__  # rawgpu/__init__ imports nothing heavy

    return f"rawgpu {__version__}"


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="rawgpu", description="Train a two-layer network with Numba CUDA kernels you can read.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("info", help="the engine rawgpu would pick and why, the GPU, and package versions")
    from rawgpu import kernel_report  # imports nothing heavy: numba.cuda only when it compiles

    kernel_report.add_parser(sub)

    # Every flag's help ends in its default, as argparse fills it in (%(default)s).
    t = sub.add_parser("train", help="train the two-layer network (784-128-10 by default)",
                       description="Train the two-layer network (input -> hidden ReLU -> classes) with SGD.")
    data = t.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="default: mnist where cached or downloadable, else the bundled sample")
    data.add_argument("--data-dir", metavar="DIR", help="a folder with the four standard IDX files (raw or .gz), or CIFAR-10's binary batches or archive (default: none)")
    data.add_argument("--limit-train", metavar="N", type=number_arg(int, minimum=1), default=None,
                      help="train on the first N training images only (default: all of them)")
    data.add_argument("--limit-test", metavar="N", type=number_arg(int, minimum=1), default=None,
                      help="evaluate on the first N test images only (default: all of them)")
    t.add_argument("--device", choices=DEVICES, default=None, help="engine (default: RAWGPU_DEVICE, else auto)")
    hp = t.add_argument_group("hyperparameters")
    hp.add_argument("--epochs", type=number_arg(int, minimum=1), default=5, help="passes over the training images (default: %(default)s)")
    hp.add_argument("--batch-size", type=number_arg(int, minimum=1, maximum=MAX_SIZE), default=128, help="images per SGD step (default: %(default)s)")
    hp.add_argument("--lr", type=number_arg(float, minimum=0.0, inclusive=False), default=0.01, help="learning rate, > 0 (default: %(default)s)")
    hp.add_argument("--momentum", type=number_arg(float, minimum=0.0), default=0.9, help="SGD momentum, usually 0 to 0.99 (default: %(default)s)")
    hp.add_argument("--weight-decay", type=number_arg(float, minimum=0.0), default=0.0, help="L2 penalty added to each gradient (default: %(default)s)")
    hp.add_argument("--nesterov", action="store_true", help="Nesterov momentum (default: off)")
    hp.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                    help="mlp: input -> hidden (ReLU) -> classes; cnn: the CIFAR-10 example's 3 conv + pool stages and 2 linear layers (default: %(default)s)")
    hp.add_argument("--activation", choices=("none", "relu"), default="none",
                    help="the CNN's: none (the seed's network, max-pool its only non-linearity) or relu after each conv and the first linear layer (default: %(default)s)")
    hp.add_argument("--channels", metavar="C1,C2,C3", type=widths_arg, default=None,
                    help="the CNN's three conv widths; narrow ones (4,4,8) make the simulator usable on real image sizes (default: 32,32,64, the seed's)")
    hp.add_argument("--hidden", type=number_arg(int, minimum=1, maximum=MAX_SIZE), default=None,
                    help="hidden units (the CNN's first linear layer) (default: 128 for mlp, 64 for cnn)")
    hp.add_argument("--seed", type=number_arg(int, minimum=0), default=0, help="seeds the initial weights and the shuffles (default: %(default)s)")
    out = t.add_argument_group("outputs")
    out.add_argument("--metrics", metavar="FILE", help="JSON lines: one record per epoch, and one every --log-every steps (default: none)")
    out.add_argument("--checkpoint-dir", metavar="DIR", help="write a checkpoint there after every epoch (default: none)")
    out.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir (default: off)")
    out.add_argument("--overwrite", action="store_true", help="start afresh even though --checkpoint-dir holds a checkpoint (it is replaced), and let --plot replace a PNG rawgpu did not write (default: off)")
    out.add_argument("--plot", metavar="FILE", help="a PNG (FILE.png) of the loss and accuracy curves (needs the plot extra) (default: none)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar (the running loss is printed every --log-every steps instead) (default: off)")
    out.add_argument("--log-every", metavar="N", type=number_arg(int, minimum=1), default=100, help="steps between running-loss records (default: %(default)s)")
    out.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files there (needs the tensorboard extra) (default: none)")
    t.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each training step as a CUDA graph from the second epoch on (default: on for the cuda engine)")
    return parser


def _load_data(args, log):
    from rawgpu import data

    if args.data_dir is not None:
        name = args.dataset or "custom"
        return data.load(name, data_dir=args.data_dir)
    if args.dataset is not None:
        return data.load(args.dataset)
    try:
        return data.load("mnist")
    except data.DataError as exc:
        log(f"MNIST is not available ({exc}); training on the bundled Fashion-MNIST sample instead")
        return data.load("sample")


def say(msg: str) -> None:
    """One line on stderr, in one write: ``print`` writes the text and its newline separately,
    and a Ctrl-C or SIGTERM (raised between two Python steps) could land between them and put
    ``rawgpu: terminated`` at the end of an epoch's line."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _train(args) -> int:
    import rawgpu
    from rawgpu import outputs
    from rawgpu.train import TrainConfig, train

    log = say
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, nesterov=args.nesterov, seed=args.seed, model=args.model, activation=args.activation,
        hidden=args.hidden if args.hidden is not None else (64 if args.model == "cnn" else 128),
    )
    if args.channels is not None:
        if args.model != "cnn":
            raise ValueError("--channels applies to --model cnn; the MLP has no convolutions")
        config.channels = args.channels
    config.validate()
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir (the folder holding the checkpoint)")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the checkpoint, or replace it")
    # Every output is checked before the data is loaded (a download is work too); train() checks
    # them again against the data files it reads, then locks them (metrics, checkpoint and TensorBoard).
    outputs.check_file(args.metrics, "--metrics", "metrics")
    outputs.check_file(args.plot, "--plot", "plot", overwrite=args.overwrite)
    outputs.prepare_folder(args.checkpoint_dir, "--checkpoint-dir")
    outputs.prepare_folder(args.tensorboard, "--tensorboard")
    if args.tensorboard is not None:
        from rawgpu.tensorboard_log import require_tensorboard

        require_tensorboard()
    ckpt_file = os.path.join(args.checkpoint_dir, "checkpoint.npz") if args.checkpoint_dir else None
    outputs.check_file(ckpt_file, "--checkpoint-dir")  # a pipe there would hang --resume, a name too long would fail the save
    outputs.check_distinct({"--metrics": args.metrics, "--plot": args.plot, "--checkpoint-dir": ckpt_file}, {})
    if args.plot is not None:
        from rawgpu.plot import check_suffix, require_matplotlib

        check_suffix(args.plot)
        require_matplotlib()
    if args.resume:  # a checkpoint that cannot be resumed is refused before the data loads (a download is work too)
        from rawgpu import checkpoint

        checkpoint.load(args.checkpoint_dir)
    eng = rawgpu.use(args.device) if args.device else rawgpu.current()
    dataset = _load_data(args, log).first(args.limit_train, args.limit_test)
    log(f"data: {dataset.source}")
    if eng.name == "sim":
        log(
            "note: the simulator runs every CUDA thread as a Python thread, thousands of times slower "
            "than a GPU (it is for stepping through kernels on tiny data): keep --hidden and --batch-size "
            "small and cut the data with --limit-train/--limit-test"
            + ("; for the CNN, narrow conv widths too (--channels 4,4,8)" if config.model == "cnn" and config.channels[0] > 8 else "")
        )
    if config.model == "cnn":
        from rawgpu.cnn import image_shape

        shape = "x".join(map(str, image_shape(dataset.train_images.shape[1:])))
        widths = ",".join(map(str, config.channels))
        network = f"cnn on {shape} images (conv widths {widths}, hidden {config.hidden}, activation {config.activation})"
    else:
        network = f"network {dataset.train_images[0].size}-{config.hidden}-{dataset.num_classes}"
    log(
        f"engine: {eng.name} ({eng.reason}); {network}, "
        f"{len(dataset.train_labels)} train / {len(dataset.test_labels)} test images, "
        f"SGD lr {config.lr:g} momentum {config.momentum:g}, batch {config.batch_size}, {config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    )
    records = train(
        dataset, config, metrics_path=args.metrics, checkpoint_dir=args.checkpoint_dir,
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, log=log,
        other_outputs={"--plot": args.plot}, log_every=args.log_every, tensorboard=args.tensorboard, graphs=args.graphs,
    )
    if records:
        last = records[-1]
        sys.stdout.write(f"final test accuracy {last['test_accuracy']:.4f} (test loss {last['test_loss']:.4f}) after epoch {last['epoch']}\n")
    if args.plot is not None:
        from rawgpu.plot import plot_metrics

        plot_metrics(args.metrics, records, args.plot)
        log(f"plot written to {args.plot}")
    return 0


def _run_command(argv) -> int:
    args = build_parser().parse_args(argv)
    from rawgpu.checkpoint import CheckpointError
    from rawgpu.engine import EngineError
    from rawgpu.train import TrainingError

    try:
        if args.command == "info":
            from rawgpu.info import report

            print(report())
            return 0
        if args.command == "kernels":
            from rawgpu import kernel_report

            return kernel_report.run(args)
        return _train(args)
    except MemoryError as exc:  # CuPy's OutOfMemoryError is a MemoryError too
        detail = str(exc).splitlines()[0] if str(exc) else "the allocation failed"
        say(f"rawgpu: error: out of memory ({detail}); lower --hidden or --batch-size")
        return 1
    except (ValueError, TypeError, OSError, EngineError, TrainingError, CheckpointError) as exc:
        if Signals.seen:  # a Ctrl-C or SIGTERM that surfaced inside C code as some other error
            raise KeyboardInterrupt from None
        # DataError, CheckpointError and OutputError are ValueErrors; their messages name the file or flag.
        say(f"rawgpu: error: {exc}")
        return 1


def main(argv=None) -> int:
    """The command, as a function: returns the exit status. Ctrl-C at any moment, even while
    modules load, is one line and status 130; SIGTERM is one line and 143 (:mod:`rawgpu.signals`)."""
    previous = Signals.install()
    code = None
    try:
        code = _run_command(argv)
    except KeyboardInterrupt:  # Terminated (SIGTERM) is one too
        pass
    finally:
        Signals.restore(previous)
    if code is None or Signals.seen is not None:
        return Signals.report()
    return code


def _status() -> int | None:
    """main()'s status (None: a signal cut in as main finished). From its end on, a signal is
    only noted (Signals.quiet), so none can cut the exit short."""
    try:
        try:
            return main()
        finally:
            Signals.quiet()
    except KeyboardInterrupt:  # came as main returned, before quiet() took hold
        return None
    except SystemExit as exc:  # argparse's own exits: --help, --version, a bad flag
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise


def run() -> None:
    """The ``rawgpu`` command's entry point (and ``python -m rawgpu``'s): exits with main's status.

    The signal handler goes in first, before argparse, NumPy or anything else loads. (Before
    this function runs, the interpreter is still starting up, and a Ctrl-C there is Python's.)
    After main, a SIGINT or SIGTERM is only noted, and one that came in the last moments (the
    final line printed, the files closed) still ends the command as interrupted or terminated.
    (Blocking the signals would not do: they are sent to the process, and any of NumPy's or
    Numba's threads may take one.) Then the process leaves with ``os._exit`` once the output is
    flushed, without the interpreter's
    clean-up: that takes tens of milliseconds in which a signal would kill the process with no
    word (status -2), and a KeyboardInterrupt that passed through code CPython ran with
    ``PyRun_String`` (Cython modules' set-up does) leaves a flag behind that turns a normal exit
    into death by SIGINT. Everything rawgpu writes is closed by then (files are written whole
    and renamed), so nothing is lost by skipping it.
    """
    Signals.install()
    code = _status()
    if hasattr(signal, "sigpending") and Signals.seen is None:  # one that waits, blocked in this thread
        late = signal.sigpending() & set(EXITS)
        if late:
            Signals.seen = min(late)
    if code is None or (Signals.seen is not None and code not in {c for c, _ in EXITS.values()}):
        code = Signals.report()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (rawgpu info | head -1), a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
