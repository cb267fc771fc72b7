"""The Stanford Online Products (SOP) format: label names, index files, validation."""

# The 12 super-classes in SOP order (super_class_id 1..12). chainercv's
# online_products_super_label_names misspells two of them ('chainer', 'coffe_maker').
SUPER_CLASS_NAMES = (
    'bicycle', 'cabinet', 'chair', 'coffee_maker', 'fan', 'kettle',
    'lamp', 'mug', 'sofa', 'stapler', 'table', 'toaster',
)

INDEX_FILES = {'train': 'Ebay_train.txt', 'test': 'Ebay_test.txt', 'all': 'Ebay_info.txt'}
INDEX_HEADER = 'image_id class_id super_class_id path'
