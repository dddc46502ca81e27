import JSON
import Logging

/// What the nova dialect itself does in glance (the image plugin fetches and uploads):
/// deleting images nova-compute deletes — a failed snapshot's record, an unshelved
/// server's snapshot, backups rotated out.
extension NovaComputeEndpoint {
    /// Deletes an image of `uuid` from glance with the request's token; a failure is
    /// logged and leaves the image.
    func deleteImage(_ image: String, _ uuid: String, why: String, _ ctx: [String: JSONValue]) async {
        guard let glance = plane.glance else {
            logger.warning("nova: no [glance] api_servers: image \(image) of \(uuid) stays in glance (\(why))")
            return
        }
        do {
            try await glance.deleteImage(image, token: ctx["auth_token"]?.stringValue)
            logger.info("nova: deleted image \(image) of \(uuid): \(why)")
        } catch {
            logger.warning("nova: could not delete image \(image) of \(uuid) (\(why)): \(error)")
        }
    }

    /// nova's `_rotate_backups`: of this instance's backups of `type` in glance, the
    /// newest `keep` stay and the older ones are deleted (a failure is logged; the rest go on).
    func rotateBackups(_ uuid: String, type: String, keep: Int, _ ctx: [String: JSONValue]) async {
        guard let glance = plane.glance else {
            logger.warning("nova: no [glance] api_servers: the backups of \(uuid) are not rotated")
            return
        }
        do {
            let images = try await glance.images([("image_type", "backup"), ("backup_type", type), ("instance_uuid", uuid)],
                                                 token: ctx["auth_token"]?.stringValue)
            for image in images.dropFirst(keep) {
                guard let id = image["id"]?.stringValue else { continue }
                await deleteImage(id, uuid, why: "rotated out of its \(keep) \(type) backups", ctx)
            }
        } catch {
            logger.warning("nova: could not list the \(type) backups of \(uuid) to rotate them: \(error)")
        }
    }
}
