"""World-model evaluation: how close the dream is to the real game, and how fast.

`evaluate` (open-loop PSNR per horizon beside copy-last-frame), `compare` (dream vs real per horizon: PSNR, SSIM,
view-shift agreement, IDM accuracy, reward/termination precision-recall, video), `model_table` (several models:
quality against speed, drift), `fidelity` (action following, open loop, outcomes, 1000-frame health), `idm` (the
inverse dynamics model these use to read actions back from frames) and `plots`. The frame metrics themselves live
in `generator.metrics`.
"""
