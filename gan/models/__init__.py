"""The generators (`dcgan`, `pix2pix`, `cyclegan`), each a `gan.base.GanModule` listed in
`gan.registry`, with what they share for placing lesions (`paste`, `pix2pix_masks`)."""
