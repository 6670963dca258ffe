"""Small architecture configurations shared by the TF and JAX model tests (no TF import)."""

BANDS = 5
# name -> (architecture, kwargs, (height, width)): tiny widths where the architecture allows
CASES = {
    "unet_plain": ("unet", dict(depth=3, filters=4), (32, 48)),
    "unet_plain_transpose": ("unet", dict(depth=2, filters=4, upsampling="transpose", dropout=0.1,
                                          dropout_position="encoder"), (32, 40)),
    "unet_resnet34": ("unet", dict(backbone="resnet34", decoder_filters=[16, 8, 8, 4, 4]), (64, 96)),
    "unet_resnet50_residual_stem": ("unet", dict(backbone="resnet50", decoder_filters=[16, 8, 8, 4],
                                                 stem="residual", upsampling="nearest"), (64, 32)),
    "unet_efficientnetb0": ("unet", dict(backbone="efficientnetb0", decoder_filters=[16, 8, 8, 4, 4],
                                         upsampling="transpose"), (32, 64)),
    "unet_vgg16": ("unet", dict(backbone="vgg16", decoder_filters=[16, 8, 8, 4, 4]), (64, 64)),
    "fcn8_vgg16": ("fcn8", dict(backbone="vgg16", decoder_filters=[16]), (64, 96)),
    "fcn8_efficientnetb0": ("fcn8", dict(backbone="efficientnetb0", decoder_filters=[16]), (32, 64)),
    "fpn_efficientnetb0": ("fpn", dict(decoder_filters=[16, 8]), (64, 96)),
    "fpn_resnet34": ("fpn", dict(backbone="resnet34", decoder_filters=[16, 8], aggregation="sum"), (32, 64)),
}
# the heaviest encoders (hundreds of layers): marked slow, still run in CI
SLOW = {"fcn8_efficientnetb0", "fpn_resnet34", "unet_vgg16"}
