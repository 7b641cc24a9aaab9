from helpers import compression


def my_edge_recipe(src, dst, pool_maps, pool_labels):
    # the tuning maps above are balanced over every pattern: calibrate on those
    return compression.quantize_static_onnx(src, dst, calibration=tune_maps[:256])  # noqa: F821
