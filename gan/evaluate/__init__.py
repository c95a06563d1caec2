"""Judging a generator: the evaluation protocol (`protocol`: SSIM/PSNR, FID/KID,
memorisation, figures), its metrics as pure functions (`quality`) and lesion preservation
under translation (`preservation`)."""
