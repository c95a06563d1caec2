"""Data in and out: real CT into dataset folders (`ct`, `volumes`), boxes as VOC/COCO
(`boxes`), nnU-Net v2 and MONAI exports (`nnunet`, `monai`), and what a folder holds (`info`)."""
