"""I/O at the edge: checkpoint files and image files. The core (models, losses, modules) never imports this
package except to read weights a user points it at."""
from segexpr.files import atomic_path, refuse_existing, staged_folder, write_bytes, write_text
from segexpr.io.checkpoints import CheckpointError, load_module, read_checkpoint
from segexpr.io.images import IMAGE_SUFFIXES, images_to_uint8, list_images, read_image, uint8_to_images, write_image

__all__ = ["CheckpointError", "IMAGE_SUFFIXES", "atomic_path", "images_to_uint8", "list_images", "load_module",
           "read_checkpoint", "read_image", "refuse_existing", "staged_folder", "uint8_to_images", "write_bytes",
           "write_image", "write_text"]
