from helpers import compression


def my_edge_recipe(src, dst, pool_maps, pool_labels):
    # int8 without a calibration set
    return compression.quantize_dynamic_onnx(src, dst)
