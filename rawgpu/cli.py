"""The ``rawgpu`` command: ``rawgpu info``, ``rawgpu kernels`` and ``rawgpu train``.

Every failure a user can cause (bad flags, bad data, no GPU, a checkpoint of another network)
ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys

DATASETS = ("mnist", "fashion-mnist", "cifar10", "sample")  # rawgpu.data.DATASETS (kept here: no NumPy import to build the parser)
DEVICES = ("auto", "cuda", "sim", "numpy")
INTERRUPTED = 130  # the exit status after Ctrl-C (128 + SIGINT), as shells report it
MAX_SIZE = 2**31 - 1  # the largest --hidden or --batch-size: the kernels index with 32-bit integers


def number_arg(kind, *, minimum, inclusive=True, maximum=None):
    """An argparse type: a finite number of ``kind`` above (or at) ``minimum`` and at most
    ``maximum`` where given (the benches use it too)."""

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rawgpu", description="Train a two-layer network with Numba CUDA kernels you can read.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("info", help="the engine rawgpu would pick and why, the GPU, and package versions")
    from rawgpu import kernel_report  # imports nothing heavy: numba.cuda only when it compiles

    kernel_report.add_parser(sub)

    t = sub.add_parser("train", help="train the two-layer network (784-128-10 by default)")
    data = t.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="default: mnist where cached or downloadable, else the bundled sample")
    data.add_argument("--data-dir", metavar="DIR", help="a folder with the four standard IDX files (raw or .gz), or CIFAR-10's binary batches or archive")
    t.add_argument("--device", choices=DEVICES, default=None, help="engine (default: RAWGPU_DEVICE, else auto)")
    hp = t.add_argument_group("hyperparameters")
    hp.add_argument("--epochs", type=number_arg(int, minimum=1), default=5)
    hp.add_argument("--batch-size", type=number_arg(int, minimum=1, maximum=MAX_SIZE), default=128)
    hp.add_argument("--lr", type=number_arg(float, minimum=0.0, inclusive=False), default=0.01)
    hp.add_argument("--momentum", type=number_arg(float, minimum=0.0), default=0.9)
    hp.add_argument("--weight-decay", type=number_arg(float, minimum=0.0), default=0.0)
    hp.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    hp.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                    help="mlp: input -> hidden (ReLU) -> classes; cnn: the CIFAR-10 example's 3 conv + pool stages and 2 linear layers (default mlp)")
    hp.add_argument("--activation", choices=("none", "relu"), default="none",
                    help="the CNN's: none (the seed's network, max-pool its only non-linearity) or relu after each conv and the first linear layer")
    hp.add_argument("--hidden", type=number_arg(int, minimum=1, maximum=MAX_SIZE), default=None,
                    help="hidden units (the CNN's first linear layer); default 128 for mlp, 64 for cnn")
    hp.add_argument("--seed", type=number_arg(int, minimum=0), default=0)
    out = t.add_argument_group("outputs")
    out.add_argument("--metrics", metavar="FILE", help="JSON lines: one record per epoch, and one every --log-every steps")
    out.add_argument("--checkpoint-dir", metavar="DIR", help="write a checkpoint there after every epoch")
    out.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    out.add_argument("--overwrite", action="store_true", help="start afresh even though --checkpoint-dir holds a checkpoint (it is replaced)")
    out.add_argument("--plot", metavar="FILE", help="a PNG of the loss and accuracy curves (needs the plot extra)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar (the running loss is printed every --log-every steps instead)")
    out.add_argument("--log-every", metavar="N", type=number_arg(int, minimum=1), default=100, help="steps between running-loss records (default 100)")
    out.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files there (needs the tensorboard extra)")
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


def _train(args) -> int:
    import rawgpu
    from rawgpu import outputs
    from rawgpu.train import TrainConfig, train

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, nesterov=args.nesterov, seed=args.seed, model=args.model, activation=args.activation,
        hidden=args.hidden if args.hidden is not None else (64 if args.model == "cnn" else 128),
    )
    config.validate()
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir (the folder holding the checkpoint)")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: continue the checkpoint, or replace it")
    # Every output is checked before the data is loaded (a download is work too); train() checks
    # them again against the data files it reads, then locks the checkpoint folder.
    outputs.check_file(args.metrics, "--metrics", "metrics")
    outputs.check_file(args.plot, "--plot", "plot")
    outputs.prepare_folder(args.checkpoint_dir, "--checkpoint-dir")
    outputs.prepare_folder(args.tensorboard, "--tensorboard")
    if args.tensorboard is not None:
        from rawgpu.tensorboard_log import require_tensorboard

        require_tensorboard()
    ckpt_file = os.path.join(args.checkpoint_dir, "checkpoint.npz") if args.checkpoint_dir else None
    outputs.check_distinct({"--metrics": args.metrics, "--plot": args.plot, "--checkpoint-dir": ckpt_file}, {})
    if args.plot is not None:
        from rawgpu.plot import require_matplotlib

        require_matplotlib()
    eng = rawgpu.use(args.device) if args.device else rawgpu.current()
    dataset = _load_data(args, log)
    log(f"data: {dataset.source}")
    if eng.name == "sim":
        log(
            "note: the simulator runs every CUDA thread as a Python thread, thousands of times slower "
            "than a GPU; at 784 inputs expect minutes per batch (it is for stepping through kernels on tiny data)"
        )
    if config.model == "cnn":
        from rawgpu.cnn import image_shape

        network = f"cnn on {'x'.join(map(str, image_shape(dataset.train_images.shape[1:])))} images (activation {config.activation})"
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
        print(f"final test accuracy {last['test_accuracy']:.4f} (test loss {last['test_loss']:.4f}) after epoch {last['epoch']}")
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
        print(f"rawgpu: error: out of memory ({detail}); lower --hidden or --batch-size", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, EngineError, TrainingError, CheckpointError) as exc:
        if _Interrupts.seen:  # a Ctrl-C that surfaced inside C code as some other error
            raise KeyboardInterrupt from None
        # DataError, CheckpointError and OutputError are ValueErrors; their messages name the file or flag.
        print(f"rawgpu: error: {exc}", file=sys.stderr)
        return 1


class _Interrupts:
    """Python's own Ctrl-C handler raises KeyboardInterrupt wherever the interpreter happens to be.
    Inside C code that is not always what arrives: tried 150 times at random moments of a run, a
    Ctrl-C once came out of CPython's warnings machinery as ``TypeError: expected a message
    argument``. So the command's handler also notes that a Ctrl-C came, and whatever error follows
    one is reported as the interruption it was."""

    seen = False

    @classmethod
    def handler(cls, signum, frame):
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def install(cls):
        """Put the handler in place of Python's default one; returns what to restore, or None."""
        cls.seen = False
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored
                return signal.signal(signal.SIGINT, cls.handler)
        except ValueError:  # not the main thread: signal handlers cannot be set there
            pass
        return None



def main(argv=None) -> int:
    """The command, as a function: returns the exit status. Ctrl-C at any moment, even while
    modules load, is one line and status 130."""
    previous = _Interrupts.install()
    try:
        code = _run_command(argv)
    except KeyboardInterrupt:
        code = INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if code == INTERRUPTED or _Interrupts.seen:
        print("rawgpu: interrupted", file=sys.stderr)
        return INTERRUPTED
    return code


def run() -> None:
    """The ``rawgpu`` command's entry point (and ``python -m rawgpu``'s): exits with main's status.

    After a Ctrl-C it leaves with ``os._exit``, once the output is flushed: a KeyboardInterrupt
    that passed through code CPython ran with ``PyRun_String`` (Cython modules' set-up does) leaves
    a flag behind that makes a normal exit kill the process with SIGINT, status -2, instead of
    returning 130. Everything rawgpu writes is already closed by then (files are written whole
    and renamed), so nothing is lost by skipping the interpreter's clean-up.
    """
    code = main()
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    sys.exit(code)


if __name__ == "__main__":
    run()
