"""MomentumSGD with a scaled lr, weight decay, warm-up and step decay, across ranks."""
import warnings

import chainer
import chainermn
import numpy
from chainer.optimizer_hooks import WeightDecay

from distributed.triggers import PRIORITY

REFERENCE_BATCH = 256  # Goyal et al. 2017: lr = base x global batch / 256


def scaled_lr(base, rule, ranks, batch_size):
    """The peak lr for ``ranks`` workers of ``batch_size`` images each."""
    if rule == 'workers':
        return base * ranks
    if rule == 'batch':
        return base * ranks * batch_size / REFERENCE_BATCH
    return base


class LrSchedule:
    """lr at an iteration: linear warm-up from ``start`` x peak, then x ``factor`` at each
    decay epoch. A pure function of the iteration, so a resumed run gets the same lr."""

    def __init__(self, peak, iters_per_epoch, warmup_epochs=0.0, start=1.0,
                 decay_epochs=(), factor=0.1):
        self.peak = peak
        self.iters_per_epoch = iters_per_epoch
        self.warmup_iters = warmup_epochs * iters_per_epoch
        self.start = start
        self.decay_iters = [e * iters_per_epoch for e in decay_epochs]
        self.factor = factor

    def __call__(self, iteration):
        lr = self.peak * self.factor ** sum(iteration >= d for d in self.decay_iters)
        if iteration < self.warmup_iters:
            progress = iteration / self.warmup_iters
            lr *= self.start + (1 - self.start) * progress
        return lr


def create_schedule(config, ranks, iters_per_epoch):
    opt = config.optimizer
    start = (min(8.0 / ranks, 1.0) if opt.warmup_start == 'auto' else float(opt.warmup_start))
    peak = scaled_lr(opt.lr, opt.lr_scaling, ranks, config.train.batch_size)
    return LrSchedule(peak, iters_per_epoch, opt.warmup_epochs, start,
                      opt.decay_epochs, opt.decay_factor)


class MomentumSGD(chainer.optimizers.MomentumSGD):
    """chainer's MomentumSGD, whose checkpointed state is all of its state, and whose
    check of the gradients for inf and nan waits for the device once per step.

    chainer's ``serialize`` keeps the momentum and the update counts, but neither the
    float32 master copy of each float16 weight (``use_fp32_update``) nor the dynamic loss
    scale: a mixed16 run resumed from a checkpoint restarted both (its masters rounded to
    float16, its scale at 1) and no longer followed the run it continued. Here they are
    kept as ``<param>/fp32_param`` (float32, the parameter's shape; None before its first
    update) and ``loss_scale`` (float, None without loss scaling) with
    ``loss_scaling_isnan_ever`` (bool) beside the optimizer's ``t`` and ``epoch``.
    """

    def serialize(self, serializer):
        super().serialize(serializer)
        loading = isinstance(serializer, chainer.serializer.Deserializer)
        scale = serializer('loss_scale', self._loss_scale)
        isnan_ever = serializer('loss_scaling_isnan_ever',
                                bool(getattr(self, '_loss_scaling_isnan_ever', False)))
        # A run without loss scaling keeps none, whatever the checkpoint holds.
        if loading and self._loss_scale is not None and scale is not None:
            self._loss_scale = float(scale)
            self._loss_scaling_isnan_ever = bool(isnan_ever)
        for name, param in self.target.namedparams():
            rule = getattr(param, 'update_rule', None)
            if (rule is None or not rule._use_fp32_update or param.array is None
                    or param.dtype != numpy.float16):
                continue
            master = rule._fp32_param
            saved = serializer[name]('fp32_param', None if master is None else master.array)
            if loading:
                rule._fp32_param = None if saved is None else chainer.Parameter(
                    param.device.send(numpy.asarray(saved, numpy.float32)), name=param.name)

    def check_nan_in_grads(self):
        """Mark the step unsafe (``is_safe_to_update`` False) when a gradient holds inf or
        nan, under dynamic loss scaling; warn naming the parameters.

        chainer's own tests each parameter and reads each answer on the host, one device
        synchronisation per parameter (161 for ResNet-50); here the answers stay on the
        device, stacked, and one is read. The names are read only when a step overflows.
        """
        self._loss_scaling_isnan = False
        if not self._loss_scaling_is_dynamic:
            return
        named = [(name, param.grad) for name, param in self.target.namedparams()
                 if param.grad is not None]
        if not named:
            return
        xp = chainer.backend.get_array_module(named[0][1])
        finite = xp.stack([xp.isfinite(grad).all() for _, grad in named])
        if bool(finite.all()):
            return
        self._loss_scaling_isnan = True
        self._loss_scaling_isnan_ever = True
        flags = chainer.backend.CpuDevice().send(finite)
        for (name, _), ok in zip(named, flags):
            if not ok:
                warnings.warn('Non finite number found in param.grad of {} (iteration: {}, '
                              'loss_scale: {})'.format(name, self.t, self._loss_scale))


def guards_overflow(config):
    """Whether gradients pass through float16 (``train.dtype=mixed16``, or
    ``comm.allreduce_dtype=float16``), where they can overflow to inf: the optimizer then
    scales the loss dynamically and skips, with a smaller scale, a step whose gradients
    are not all finite, instead of writing inf or nan into the weights."""
    return config.train.dtype == 'mixed16' or config.comm.allreduce_dtype == 'float16'


def create_optimizer(config, model, comm, schedule):
    """MomentumSGD wrapped by ChainerMN so gradients are averaged over ranks each update.

    Weight decay skips BatchNorm's beta and gamma (Goyal et al. 2017, section 5.1).
    Under mixed16 the weights are updated through float32 master copies; wherever
    gradients pass through float16 (``guards_overflow``) the loss is scaled dynamically
    (chainer's ``loss_scaling``: x2 after each safe step until one overflows, then x0.5 on
    an overflow and x2 per 1000 safe steps; Micikevicius et al. 2018, "Mixed Precision
    Training").
    """
    optimizer = chainermn.create_multi_node_optimizer(
        MomentumSGD(lr=schedule(0), momentum=config.optimizer.momentum), comm)
    if config.train.dtype == 'mixed16':
        optimizer.use_fp32_update()
    if guards_overflow(config):
        # A scale that keeps small float16 gradients from flushing to zero, and skips the
        # steps whose gradients overflow (in backward, or in a float16 allreduce).
        optimizer.loss_scaling()
    optimizer.setup(model)
    if config.optimizer.weight_decay > 0:
        decay = WeightDecay(config.optimizer.weight_decay)
        for name, param in model.namedparams():
            if name.rsplit('/', 1)[-1] not in ('beta', 'gamma'):
                param.update_rule.add_hook(decay)
    return optimizer


def schedule_extension(schedule):
    """A trainer extension that sets the lr for the next update (and at start or resume).

    It runs after the extensions that read (``observe_lr`` logs the lr the update used),
    before the checkpointer, which then saves the lr of the next update
    (``triggers.PRIORITY``).
    """
    def set_lr(trainer):
        trainer.updater.get_optimizer('main').lr = schedule(trainer.updater.iteration)
    return chainer.training.make_extension(
        trigger=(1, 'iteration'), priority=PRIORITY['lr_schedule'],
        initializer=set_lr, default_name='lr_schedule')(set_lr)
