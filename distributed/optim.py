"""MomentumSGD with a scaled lr, weight decay, warm-up and step decay, across ranks."""
import chainer
import chainermn
from chainer.optimizer_hooks import WeightDecay

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


def create_optimizer(config, model, comm, schedule):
    """MomentumSGD wrapped by ChainerMN so gradients are averaged over ranks each update.

    Weight decay skips BatchNorm's beta and gamma (Goyal et al. 2017, section 5.1).
    """
    optimizer = chainermn.create_multi_node_optimizer(
        chainer.optimizers.MomentumSGD(lr=schedule(0), momentum=config.optimizer.momentum),
        comm)
    if config.train.dtype == 'mixed16':
        # float32 master copies of the float16 weights, and a loss scale that keeps small
        # float16 gradients from flushing to zero (and skips steps that overflow).
        optimizer.use_fp32_update()
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
    before the checkpointer, which then saves the lr of the next update.
    """
    def set_lr(trainer):
        trainer.updater.get_optimizer('main').lr = schedule(trainer.updater.iteration)
    return chainer.training.make_extension(
        trigger=(1, 'iteration'), priority=chainer.training.PRIORITY_READER - 1,
        initializer=set_lr, default_name='lr_schedule')(set_lr)
