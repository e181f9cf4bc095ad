/**
 * The longest initiator name, label key and label value a coordinator takes by default (its `maxLabelChars`),
 * in UTF-16 code units as it counts them. Shared so an initiator refuses a name over it when it is created,
 * instead of every transaction failing at Commit after its business work.
 */
export const LABEL_MAX_CHARS = 256;
