"""The edit library, in the order of the walk: read labelled text (corpus), profile routing (profile,
stats), select experts (select, attribute, tune), hold them as a mask (mask), write the edited
checkpoint (export)."""
