// One record per parent index of a case; cases without one are dropped.
const PARENT = "parent";

function transform(doc, change) {
  const links = (doc.indices || []).filter((ix) => ix.identifier === PARENT);
  if (links.length === 0) {
    return null;
  }
  return links.map((ix) => ({
    _id: doc._id + ":" + ix.referenced_id,
    case_id: doc._id,
    household_id: ix.referenced_id,
    domain: doc.domain,
    seq: change.seq,
  }));
}
