"""ctypes mirror of include/svdiff.h: the structs field for field, the callback types, and the
prototype of every function. Keep in step with the header (tests/test_api_layout.py in python/tests
checks the struct sizes against the library's default-params functions where it can)."""
import ctypes as C

# error codes (svdiff_status_t)
OK, ERR_IO, ERR_FORMAT, ERR_SHAPE, ERR_NOMEM, ERR_ARG, ERR_NUMERIC, ERR_CANCELLED, ERR_UNSUPPORTED = 0, -1, -2, -3, -4, -5, -6, -7, -8

# svdiff_stage_t
STAGES = {0: "sample", 1: "train", 2: "class_images", 3: "invert", 4: "edit"}
# svdiff_compute_t
COMPUTE = {None: 0, "default": 0, "fp32": 1, "bf16": 2}
# svdiff_train_mode_t
TRAIN_MODES = {"shifts": 0, "full": 1, "lora": 2}

PROGRESS_FN = C.CFUNCTYPE(None, C.c_int, C.c_int, C.c_int, C.c_double, C.c_void_p)
CANCEL_FN = C.CFUNCTYPE(C.c_int, C.c_void_p)
IMAGE_FN = C.CFUNCTYPE(None, C.POINTER(C.c_uint8), C.c_int, C.c_int, C.c_int, C.c_uint64, C.c_void_p)


class Callbacks(C.Structure):
    _fields_ = [("progress", PROGRESS_FN), ("cancel", CANCEL_FN), ("image", IMAGE_FN), ("user_data", C.c_void_p)]


class ImageStruct(C.Structure):
    _fields_ = [("rgb", C.POINTER(C.c_uint8)), ("width", C.c_int), ("height", C.c_int), ("seed", C.c_uint64)]


class ModelParams(C.Structure):
    _fields_ = [("tokenizer_dir", C.c_char_p), ("prediction_type", C.c_char_p), ("scheduler_config", C.c_char_p),
                ("threads", C.c_int), ("compute", C.c_int), ("svd_cache_dir", C.c_char_p), ("force", C.c_int)]


class ModelInfo(C.Structure):
    _fields_ = [("family", C.c_char * 32), ("prediction_type", C.c_char * 16), ("weights_hash", C.c_char * 17),
                ("native_width", C.c_int), ("native_height", C.c_int), ("latent_channels", C.c_int),
                ("scale_factor", C.c_int), ("unet_levels", C.c_int), ("context_dim", C.c_int),
                ("context_tokens", C.c_int), ("has_vae", C.c_int), ("unet_params", C.c_int64),
                ("text_encoder_params", C.c_int64), ("vae_params", C.c_int64), ("train_timesteps", C.c_int)]


class GenerateParams(C.Structure):
    _fields_ = [("prompt", C.c_char_p), ("negative_prompt", C.c_char_p), ("width", C.c_int), ("height", C.c_int),
                ("steps", C.c_int), ("cfg", C.c_float), ("eta", C.c_float), ("sampler", C.c_int),
                ("seed", C.c_uint64), ("num_images", C.c_int), ("batch", C.c_int),
                ("init_latents", C.POINTER(C.c_float)), ("n_init_latents", C.c_int),
                ("out_latents", C.POINTER(C.c_float)), ("out_rgb", C.POINTER(C.c_uint8)),
                ("callbacks", Callbacks),
                ("original_size", C.c_int * 2), ("crops_coords_top_left", C.c_int * 2), ("target_size", C.c_int * 2),
                ("negative_original_size", C.c_int * 2), ("negative_crops_coords_top_left", C.c_int * 2),
                ("negative_target_size", C.c_int * 2), ("clip_skip", C.c_int)]


# the micro-conditioning fields of GenerateParams (SDXL), each an (a, b) pair
MICRO_CONDITIONING = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
                      "negative_crops_coords_top_left", "negative_target_size")


class TrainParams(C.Structure):
    _fields_ = [("model", C.c_char_p), ("tokenizer_dir", C.c_char_p), ("prediction_type", C.c_char_p),
                ("scheduler_config", C.c_char_p), ("out_dir", C.c_char_p),
                ("instance_dir", C.c_char_p), ("instance_images", C.POINTER(ImageStruct)), ("n_instance_images", C.c_int),
                ("instance_prompt", C.c_char_p),
                ("class_dir", C.c_char_p), ("class_images", C.POINTER(ImageStruct)), ("n_class_images", C.c_int),
                ("class_prompt", C.c_char_p), ("num_class_images", C.c_int),
                ("mode", C.c_int), ("resolution", C.c_int), ("steps", C.c_int), ("batch_size", C.c_int),
                ("grad_accum", C.c_int), ("lr", C.c_float), ("lr_1d", C.c_float), ("seed", C.c_uint64),
                ("train_text_encoder", C.c_int), ("rank", C.c_int), ("checkpoint_every", C.c_int),
                ("resume", C.c_int), ("force", C.c_int), ("save_fp16", C.c_int), ("svd_cache_dir", C.c_char_p),
                ("threads", C.c_int), ("settings", C.POINTER(C.c_char_p)), ("n_settings", C.c_int),
                ("callbacks", Callbacks)]


class EditParams(C.Structure):
    _fields_ = [("image_path", C.c_char_p), ("image", C.POINTER(ImageStruct)), ("prompt", C.c_char_p),
                ("edits", C.POINTER(C.c_char_p)), ("n_edits", C.c_int), ("resolution", C.c_int), ("steps", C.c_int),
                ("cfg", C.c_float), ("eta", C.c_float), ("slerp", C.c_float), ("invert_source", C.c_int),
                ("no_inversion", C.c_int), ("seed", C.c_uint64), ("callbacks", Callbacks)]


class EditReport(C.Structure):
    _fields_ = [("noise_reconstruction_psnr", C.c_double), ("vae_roundtrip_psnr", C.c_double),
                ("reconstruction_vs_vae_psnr", C.c_double)]


class ShiftsPart(C.Structure):
    _fields_ = [("present", C.c_int), ("folder", C.c_int), ("file", C.c_char_p), ("entries", C.c_int),
                ("values", C.c_long), ("matrices", C.c_int), ("norms", C.c_int), ("dtype", C.c_char_p),
                ("dtype_bytes", C.c_int), ("kept", C.c_long), ("taken", C.c_int), ("n_meta", C.c_int)]


# svdiff_fit_fn: (part, path or NULL, lost, max_gain_err, user_data)
FIT_FN = C.CFUNCTYPE(None, C.c_int, C.c_char_p, C.c_double, C.c_double, C.c_void_p)


class ConvertParams(C.Structure):
    _fields_ = [("fp16", C.c_int), ("format", C.c_char_p), ("model", C.c_char_p), ("force", C.c_int),
                ("fit", FIT_FN), ("user_data", C.c_void_p)]


class ConvertStats(C.Structure):
    _fields_ = [("lossy", C.c_int), ("lost", C.c_double), ("n_fitted", C.c_int), ("worst_lost", C.c_double),
                ("worst_path", C.c_char * 256)]


# svdiff_lora_format_t, svdiff_dtype_t
LORA_FORMATS = {"kohya": 0, "diffusers": 1}
DTYPES = {"f32": 0, "fp32": 0, "f16": 1, "fp16": 1, "bf16": 2}


class LoraParams(C.Structure):
    _fields_ = [("format", C.c_int), ("max_rank", C.c_int), ("energy", C.c_double), ("dtype", C.c_int),
                ("no_norms", C.c_int), ("no_embeddings", C.c_int), ("force", C.c_int), ("check", C.c_int),
                ("svd_cache_dir", C.c_char_p)]


class LoraStats(C.Structure):
    _fields_ = [("layers", C.c_int), ("zero_layers", C.c_int), ("norms", C.c_int), ("dropped", C.c_int),
                ("rank_min", C.c_int), ("rank_max", C.c_int), ("energy_total", C.c_double),
                ("energy_kept", C.c_double), ("bytes", C.c_long), ("err2", C.c_double), ("ref2", C.c_double)]


P = C.c_void_p   # opaque handles (svdiff_model_t *, svdiff_shifts_t *)
I = C.c_int
S = C.c_char_p

# name: (restype, argtypes)
PROTOTYPES = {
    "svdiff_version": (S, []),
    "svdiff_last_error": (S, []),
    "svdiff_error_name": (S, [I]),
    "svdiff_free": (None, [P]),
    "svdiff_set_threads": (None, [I]),
    "svdiff_images_free": (None, [C.POINTER(ImageStruct), I]),
    "svdiff_model_default_params": (ModelParams, []),
    "svdiff_model_open": (I, [S, C.POINTER(ModelParams), C.POINTER(P)]),
    "svdiff_model_close": (None, [P]),
    "svdiff_model_info": (I, [P, C.POINTER(ModelInfo)]),
    "svdiff_model_latent_shape": (I, [P, I, I, C.POINTER(I), C.POINTER(I), C.POINTER(I)]),
    "svdiff_model_apply_shifts": (I, [P, S, C.c_float]),
    "svdiff_model_apply_lora": (I, [P, S, C.c_float]),
    "svdiff_model_apply_delta": (I, [P, S, C.c_float]),
    "svdiff_model_apply_shift_set": (I, [P, P, C.c_float]),
    "svdiff_model_clear_adapters": (I, [P]),
    "svdiff_model_adapters_text": (S, [P]),
    "svdiff_sampler_name": (S, [I]),
    "svdiff_sampler_parse": (I, [S, C.POINTER(I)]),
    "svdiff_generate_default_params": (GenerateParams, []),
    "svdiff_generate_model_params": (GenerateParams, [P]),
    "svdiff_generate": (I, [P, C.POINTER(GenerateParams), C.POINTER(C.POINTER(ImageStruct))]),
    "svdiff_png_parameters": (P, [P, C.POINTER(GenerateParams), C.c_uint64, S]),   # char * to svdiff_free
    "svdiff_png_write": (I, [S, C.POINTER(C.c_uint8), I, I, S]),
    "svdiff_image_read": (I, [S, C.POINTER(C.POINTER(ImageStruct))]),
    "svdiff_image_grid": (I, [C.POINTER(ImageStruct), I, I, I, C.POINTER(C.POINTER(ImageStruct))]),
    "svdiff_train_default_params": (TrainParams, []),
    "svdiff_train": (I, [C.POINTER(TrainParams)]),
    "svdiff_edit_default_params": (EditParams, []),
    "svdiff_edit": (I, [P, C.POINTER(EditParams), C.POINTER(C.POINTER(ImageStruct)), C.POINTER(C.c_double)]),
    "svdiff_shifts_load": (I, [S, C.POINTER(P)]),
    "svdiff_shifts_load_ex": (I, [S, I, C.POINTER(P)]),
    "svdiff_shifts_save": (I, [P, S, I]),
    "svdiff_shifts_free": (None, [P]),
    "svdiff_shifts_count": (I, [P]),
    "svdiff_shifts_entry": (I, [P, I, C.POINTER(S), C.POINTER(C.POINTER(C.c_float)), C.POINTER(I)]),
    "svdiff_shifts_meta": (S, [P, S]),
    "svdiff_shifts_set_meta": (I, [P, S, S]),
    "svdiff_shifts_add_history": (I, [P, S]),
    "svdiff_shifts_combine": (I, [C.POINTER(P), C.POINTER(C.c_float), I, I, C.POINTER(P)]),
    "svdiff_shifts_scale": (I, [P, C.c_float, C.POINTER(P)]),
    "svdiff_shifts_limit_rank": (I, [P, I, C.POINTER(P), C.POINTER(C.c_long)]),
    "svdiff_shifts_mix": (I, [P, P, C.POINTER(S), I, I, I, I, C.POINTER(P), C.POINTER(I)]),
    "svdiff_shifts_part": (I, [P, I, C.POINTER(ShiftsPart)]),
    "svdiff_shifts_meta_at": (I, [P, I, I, C.POINTER(S), C.POINTER(S)]),
    "svdiff_shifts_describe": (I, [S, I, S, S, I, C.POINTER(P)]),          # *json: char * to svdiff_free
    "svdiff_convert_default_params": (ConvertParams, []),
    "svdiff_shifts_convert": (I, [P, C.POINTER(ConvertParams), C.POINTER(P), C.POINTER(ConvertStats)]),
    "svdiff_lora_default_params": (LoraParams, []),
    "svdiff_shifts_to_lora": (I, [P, S, C.POINTER(LoraParams), S, C.POINTER(LoraStats)]),   # stats[2]
    "svdiff_output_check": (I, [S]),
    "svdiff_folder_lock": (I, [S, C.POINTER(P)]),
    "svdiff_folder_unlock": (None, [P]),
    "svdiff_latents_read": (I, [S, I, I, I, I, C.POINTER(C.c_float)]),
    "svdiff_latents_write": (I, [S, C.POINTER(C.c_float), I, I, I, I, C.POINTER(S), I]),
    "svdiff_model_describe": (I, [S, C.POINTER(ModelParams), C.POINTER(P)]),   # *json: char * to svdiff_free
    "svdiff_model_describe_at": (I, [S, C.POINTER(ModelParams), C.c_int, C.POINTER(P)]),
    "svdiff_pretrain_default_params": (TrainParams, []),
    "svdiff_pretrain": (I, [C.POINTER(TrainParams)]),
    "svdiff_edit_report": (I, [P, C.POINTER(EditParams), C.POINTER(ImageStruct), C.POINTER(EditReport)]),
    "svdiff_psnr": (C.c_double, [C.POINTER(C.c_uint8), C.POINTER(C.c_uint8), C.c_size_t]),
}


def declare(lib):
    """Sets restype / argtypes of every function; a function the library lacks is an error naming it."""
    missing = [name for name in PROTOTYPES if not hasattr(lib, name)]
    if missing:
        raise OSError("%s lacks %d function(s) of svdiff.h: %s" % (lib._name, len(missing), ", ".join(missing)))
    for name, (res, args) in PROTOTYPES.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
