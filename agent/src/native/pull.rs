//! The puller thread: images pulled one at a time off the control loop, the store
//! kept within its size, unused images collected.

use super::*;

pub(super) type PullDone = (InstanceRef, Result<Image, String>);

/// Work for the puller thread.
#[derive(Debug)]
pub(super) enum Job {
    /// Pull the image of an instance (with the images in use, kept should the store
    /// be over its size).
    Pull(InstanceRef, String, Vec<String>),
    /// Remove every image not named here (the images of the instances kept).
    Collect(Vec<String>),
}

/// The puller thread: pulls what an SLA may name, keeping the store within its size.
pub(super) fn puller(
    store: ImageStore,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<PullDone>,
    woken: std::sync::Arc<tokio::sync::Notify>,
    containment: Containment,
    registries: RegistryConfig,
) {
    for job in jobs {
        match job {
            Job::Pull(who, image, in_use) => {
                let r = match containment.refuses_image(&image, &registries) {
                    Some(why) => Err(why),
                    None => store
                        .pull(&image)
                        .map_err(|e| e.to_string())
                        .and_then(|img| {
                            within_size(&store, &containment, &image, in_use).map(|()| img)
                        }),
                };
                if done.send((who, r)).is_err() {
                    break;
                }
                woken.notify_one();
            }
            Job::Collect(keep) => {
                let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
                match store.gc(&keep) {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "unused images collected"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "image collection"),
                }
            }
        }
    }
}

/// Keep the image store within `--image-store-mib` after pulling `image`: images no
/// instance uses go first; if that is not enough, the new image goes and its pull
/// fails, saying so.
pub(super) fn within_size(
    store: &ImageStore,
    c: &Containment,
    image: &str,
    mut in_use: Vec<String>,
) -> Result<(), String> {
    if c.image_store_mib == 0 || !crate::defence::on(crate::defence::Defence::Limits) {
        return Ok(());
    }
    let limit = c.image_store_mib << 20;
    if store.disk_bytes() <= limit {
        return Ok(());
    }
    in_use.push(image.to_owned());
    let keep: Vec<&str> = in_use.iter().map(String::as_str).collect();
    let _ = store.gc(&keep);
    let size = store.disk_bytes();
    if size <= limit {
        return Ok(());
    }
    keep_only_others(store, &in_use, image);
    Err(format!(
        "the image store is full: {} MiB with this image, and the worker allows {} MiB \
         (--image-store-mib); the images in use stay",
        size >> 20,
        c.image_store_mib
    ))
}

pub(super) fn keep_only_others(store: &ImageStore, in_use: &[String], image: &str) {
    let keep: Vec<&str> = in_use
        .iter()
        .map(String::as_str)
        .filter(|i| *i != image)
        .collect();
    let _ = store.gc(&keep);
}
