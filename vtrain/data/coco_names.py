"""COCO 2017's category names by category id (the 91-entry label space of models trained on COCO, such as
the official DETR checkpoints: ids 1 .. 90 with gaps, "N/A" for the 11 ids that no category uses), as in
instances_{train,val}2017.json and the official DETR code's ``CLASSES``; and COCO panoptic's stuff names and
every panoptic category's colour."""

COCO_CATEGORY_NAMES: tuple[str, ...] = (
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


# COCO panoptic's 53 stuff categories by id (ids 92 .. 200; its 80 thing categories have the ids and names
# of COCO_CATEGORY_NAMES), as in the panopticapi's panoptic_coco_categories.json; the official DETR
# panoptic model predicts labels 0 .. 249 over these ids.
COCO_PANOPTIC_STUFF_NAMES: dict[int, str] = {
    92: "banner", 93: "blanket", 95: "bridge", 100: "cardboard", 107: "counter", 109: "curtain", 112:
    "door-stuff", 118: "floor-wood", 119: "flower", 122: "fruit", 125: "gravel", 128: "house", 130: "light",
    133: "mirror-stuff", 138: "net", 141: "pillow", 144: "platform", 145: "playingfield", 147: "railroad",
    148: "river", 149: "road", 151: "roof", 154: "sand", 155: "sea", 156: "shelf", 159: "snow", 161:
    "stairs", 166: "tent", 168: "towel", 171: "wall-brick", 175: "wall-stone", 176: "wall-tile", 177:
    "wall-wood", 178: "water-other", 180: "window-blind", 181: "window-other", 184: "tree-merged", 185:
    "fence-merged", 186: "ceiling-merged", 187: "sky-other-merged", 188: "cabinet-merged", 189:
    "table-merged", 190: "floor-other-merged", 191: "pavement-merged", 192: "mountain-merged", 193:
    "grass-merged", 194: "dirt-merged", 195: "paper-merged", 196: "food-other-merged", 197:
    "building-other-merged", 198: "rock-merged", 199: "wall-other-merged", 200: "rug-merged",
}  # fmt: skip

# the colour of each panoptic category id (panoptic_coco_categories.json), things and stuff
COCO_PANOPTIC_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (220, 20, 60), 2: (119, 11, 32), 3: (0, 0, 142), 4: (0, 0, 230), 5: (106, 0, 228), 6: (0, 60, 100),
    7: (0, 80, 100), 8: (0, 0, 70), 9: (0, 0, 192), 10: (250, 170, 30), 11: (100, 170, 30), 13: (220, 220,
    0), 14: (175, 116, 175), 15: (250, 0, 30), 16: (165, 42, 42), 17: (255, 77, 255), 18: (0, 226, 252), 19:
    (182, 182, 255), 20: (0, 82, 0), 21: (120, 166, 157), 22: (110, 76, 0), 23: (174, 57, 255), 24: (199,
    100, 0), 25: (72, 0, 118), 27: (255, 179, 240), 28: (0, 125, 92), 31: (209, 0, 151), 32: (188, 208,
    182), 33: (0, 220, 176), 34: (255, 99, 164), 35: (92, 0, 73), 36: (133, 129, 255), 37: (78, 180, 255),
    38: (0, 228, 0), 39: (174, 255, 243), 40: (45, 89, 255), 41: (134, 134, 103), 42: (145, 148, 174), 43:
    (255, 208, 186), 44: (197, 226, 255), 46: (171, 134, 1), 47: (109, 63, 54), 48: (207, 138, 255), 49:
    (151, 0, 95), 50: (9, 80, 61), 51: (84, 105, 51), 52: (74, 65, 105), 53: (166, 196, 102), 54: (208, 195,
    210), 55: (255, 109, 65), 56: (0, 143, 149), 57: (179, 0, 194), 58: (209, 99, 106), 59: (5, 121, 0), 60:
    (227, 255, 205), 61: (147, 186, 208), 62: (153, 69, 1), 63: (3, 95, 161), 64: (163, 255, 0), 65: (119,
    0, 170), 67: (0, 182, 199), 70: (0, 165, 120), 72: (183, 130, 88), 73: (95, 32, 0), 74: (130, 114, 135),
    75: (110, 129, 133), 76: (166, 74, 118), 77: (219, 142, 185), 78: (79, 210, 114), 79: (178, 90, 62), 80:
    (65, 70, 15), 81: (127, 167, 115), 82: (59, 105, 106), 84: (142, 108, 45), 85: (196, 172, 0), 86: (95,
    54, 80), 87: (128, 76, 255), 88: (201, 57, 1), 89: (246, 0, 122), 90: (191, 162, 208), 92: (255, 255,
    128), 93: (147, 211, 203), 95: (150, 100, 100), 100: (168, 171, 172), 107: (146, 112, 198), 109: (210,
    170, 100), 112: (92, 136, 89), 118: (218, 88, 184), 119: (241, 129, 0), 122: (217, 17, 255), 125: (124,
    74, 181), 128: (70, 70, 70), 130: (255, 228, 255), 133: (154, 208, 0), 138: (193, 0, 92), 141: (76, 91,
    113), 144: (255, 180, 195), 145: (106, 154, 176), 147: (230, 150, 140), 148: (60, 143, 255), 149: (128,
    64, 128), 151: (92, 82, 55), 154: (254, 212, 124), 155: (73, 77, 174), 156: (255, 160, 98), 159: (255,
    255, 255), 161: (104, 84, 109), 166: (169, 164, 131), 168: (225, 199, 255), 171: (137, 54, 74), 175:
    (135, 158, 223), 176: (7, 246, 231), 177: (107, 255, 200), 178: (58, 41, 149), 180: (183, 121, 142),
    181: (255, 73, 97), 184: (107, 142, 35), 185: (190, 153, 153), 186: (146, 139, 141), 187: (70, 130,
    180), 188: (134, 199, 156), 189: (209, 226, 140), 190: (96, 36, 108), 191: (96, 96, 96), 192: (64, 170,
    64), 193: (152, 251, 152), 194: (208, 229, 228), 195: (206, 186, 171), 196: (152, 161, 64), 197: (116,
    112, 0), 198: (0, 114, 143), 199: (102, 102, 156), 200: (250, 141, 255),
}  # fmt: skip


def coco_panoptic_names(num_classes: int) -> list[str]:
    """Names by label for a model over COCO panoptic's ids (things and stuff; "N/A" for unused ids)."""
    things = {i: name for i, name in enumerate(COCO_CATEGORY_NAMES) if name != "N/A"}
    names = things | COCO_PANOPTIC_STUFF_NAMES
    return [names.get(label, "N/A") for label in range(num_classes)]
