"""Detection data: box records, label formats (COCO, YOLO, CVAT), boxes from segmentation labels."""
