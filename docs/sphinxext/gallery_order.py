"""The order of the examples gallery: from a first pipeline to serving; unlisted examples follow."""

ORDER = [
    "plot_text_grid_search.py",
    "plot_column_transformer.py",
    "plot_image_linear_probe.py",
    "plot_zero_shot.py",
    "plot_finetune_few_shot.py",
    "plot_finetune_images.py",
    "plot_serving.py",
    "plot_cache_processes.py",
]


class ExampleOrder:
    """Sort key for sphinx-gallery's ``within_subsection_order``."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = str(filename).rsplit("/", 1)[-1]
        return (ORDER.index(name), name) if name in ORDER else (len(ORDER), name)
