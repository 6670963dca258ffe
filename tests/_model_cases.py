"""Small architecture configurations shared by the TF and JAX model tests (no TF import)."""

BANDS = 5
# name -> (architecture, kwargs, (height, width)): tiny widths where the architecture allows
CASES = {
    "unet_plain": ("unet", dict(depth=3, filters=4), (32, 48)),
    "unet_plain_transpose": ("unet", dict(depth=2, filters=4, upsampling="transpose", dropout=0.1,
                                          dropout_position="encoder"), (32, 40)),
    "unet_resnet34": ("unet", dict(backbone="resnet34", decoder_filters=[16, 8, 8, 4, 4]), (64, 96)),
    "unet_resnet50_residual_stem": ("unet", dict(backbone="resnet50", decoder_filters=[16, 8, 8, 4, 4],
                                                 stem="residual", upsampling="nearest"), (64, 32)),
    "unet_efficientnetb0": ("unet", dict(backbone="efficientnetb0", decoder_filters=[16, 8, 8, 4, 4],
                                         upsampling="transpose"), (32, 64)),
    "unet_vgg16": ("unet", dict(backbone="vgg16", decoder_filters=[16, 8, 8, 4, 4]), (64, 64)),
    "fcn8_vgg16": ("fcn8", dict(backbone="vgg16", decoder_filters=[16]), (64, 96)),
    "fcn8_efficientnetb0": ("fcn8", dict(backbone="efficientnetb0", decoder_filters=[16]), (32, 64)),
    "fpn_efficientnetb0": ("fpn", dict(decoder_filters=[16, 8]), (64, 96)),
    "fpn_resnet34": ("fpn", dict(backbone="resnet34", decoder_filters=[16, 8], aggregation="sum"), (32, 64)),
    "unetpp_plain_ds": ("unetpp", dict(depth=2, filters=4, deep_supervision=True), (32, 48)),
    "unetpp_vgg16": ("unetpp", dict(backbone="vgg16", decoder_filters=[16, 8, 8, 4]), (64, 32)),
    "deeplabv3plus_vgg16": ("deeplabv3plus", dict(backbone="vgg16", decoder_filters=[16, 16, 8],
                                                  atrous_rates=[1, 2, 3]), (64, 96)),
    "deeplabv3plus_resnet34_os8": ("deeplabv3plus", dict(backbone="resnet34", decoder_filters=[16, 16, 8],
                                                         output_stride=8, atrous_rates=[1, 2, 3]), (32, 64)),
}
# the heaviest encoders (hundreds of layers): marked slow, still run in CI
SLOW = {"fcn8_efficientnetb0", "fpn_resnet34", "unet_vgg16", "deeplabv3plus_resnet34_os8"}


def size_multiple(case: str) -> int:
    """The input-size multiple the case's model declares (``tfseg_multiple``)."""
    arch, kwargs, _ = CASES[case]
    if arch in ("unet", "unetpp") and not kwargs.get("backbone"):
        return 2 ** kwargs["depth"]
    return kwargs.get("output_stride", 16) if arch == "deeplabv3plus" else 32
