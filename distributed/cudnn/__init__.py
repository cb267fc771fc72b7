"""Convolution2D and BatchNormalization on GPUs through NVIDIA's cuDNN frontend.

CuPy 14 removed its cuDNN bindings, so chainer 7.8.1 runs convolutions as im2col + GEMM
and BatchNorm as separate reductions. This module runs the operations that dominate a
ResNet-50 step through the cuDNN frontend's Python graph API (the ``nvidia-cudnn-frontend``
package, imported as ``cudnn``) instead:

- ``Convolution2DFunction.forward_gpu``: convolution forward (cuDNN's fprop);
- ``Deconvolution2DFunction.forward_gpu``: the gradient w.r.t. the input, which chainer
  computes as a deconvolution (cuDNN's dgrad);
- ``Convolution2DGradW.forward_gpu``: the gradient w.r.t. the weights (cuDNN's wgrad);
- ``BatchNormalization``: forward in training and its backward, through an
  implementation object handed to chainer's ``impl_selector``;
- ``FixedBatchNormalization.forward``: forward in inference.

chainer has no hook to swap a function's GPU implementation, so ``install`` replaces those
methods on the classes, in this one place, as ``compat`` applies its shims; chainer's own
methods stay in ``CHAINER_METHODS`` and run every case this path declines (and all of them
after ``uninstall``).

A graph is built once per case (``case_key``: operation, shapes, strides, dtypes, layout,
compute type, TF32 and determinism) and cached; a case cuDNN declines is cached too, and
then runs chainer's own method. Workspaces come from CuPy's memory pool, and graphs run on
CuPy's current stream. chainer hands over NCHW (its standard layout), and that is what the
graphs describe. Semantics are chainer's: ``pad``/``stride``/``dilate``/``groups`` as in
``F.convolution_2d`` (``cover_all`` is declined), output sizes from
``chainer.utils.conv.get_conv_outsize``, and BatchNorm's running statistics updated with
its ``decay`` and the unbiased variance m / (m - 1) (``update_running_stats``).
"""
