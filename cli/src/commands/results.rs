//! Getting a job's results: from the orchestrator's store, or from where an s3://
//! publisher put them.

use std::path::Path;

use anyhow::bail;
use shoal::proto::GetJobRequest;

use crate::client::Clients;

pub(crate) async fn download_results(
    clients: &mut Clients,
    job_id: &str,
    path: &str,
    dest: &Path,
) -> anyhow::Result<shoal::content::transfer::DownloadSummary> {
    if let Some(result) = latest_result(clients, job_id).await?
        && !result.published_to.is_empty()
    {
        return download_from_s3(&result, path, dest).await;
    }
    let request = shoal::proto::DownloadResultsRequest {
        job_id: job_id.to_owned(),
        path: path.to_owned(),
    };
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let jobs = &mut clients.jobs;
    let download = async {
        let stream = jobs.download_results(request).await?.into_inner();
        let progress = Some(received.clone());
        Ok(shoal::content::transfer::download_to_with_progress(stream, dest, progress).await?)
    };
    crate::client::unless_stalled(clients.stall_timeout, &received, download).await
}

/// The result of the job's latest execution, if it has one (a failed job may still have
/// partial results).
pub(crate) async fn latest_result(
    clients: &mut Clients,
    job_id: &str,
) -> anyhow::Result<Option<shoal::proto::ExecutionResult>> {
    let job = clients
        .jobs
        .get_job(GetJobRequest {
            job_id: job_id.to_owned(),
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    if job.result.is_some() {
        return Ok(job.result);
    }
    let executions = clients.executions(job_id.to_owned()).await?;
    Ok(executions
        .into_iter()
        .find(|e| e.id == job.execution_id)
        .and_then(|e| e.result))
}

/// Fetches results an s3:// publisher uploaded, with the endpoint, region and addressing
/// the executor used and this machine's AWS credentials: the whole tree, or `path` in it
/// (a file, or a directory).
async fn download_from_s3(
    result: &shoal::proto::ExecutionResult,
    path: &str,
    dest: &Path,
) -> anyhow::Result<shoal::content::transfer::DownloadSummary> {
    shoal::content::transfer::check_tree_path(path)?;
    let location = format!("{}{path}", result.published_to);
    let Ok(shoal::spec::source::Source::S3(mut source)) =
        location.parse::<shoal::spec::source::Source>()
    else {
        bail!("the job's results are at {location:?}, which is not an s3:// location");
    };
    let s3 = shoal::data::s3::S3Fetcher::new(shoal::data::s3::S3Defaults::aws());
    let options = result.published_s3.as_ref();
    let fetched = match s3.fetch(&source, options, dest, u64::MAX).await {
        Ok(fetched) => fetched,
        // Not an object: a directory of the results.
        Err(_) if !path.is_empty() => {
            source.key.push('/');
            s3.fetch(&source, options, dest, u64::MAX)
                .await
                .map_err(|e| anyhow::anyhow!("cannot fetch {location}: {e}"))?
        }
        Err(e) => bail!("cannot fetch {location}: {e}"),
    };
    let files = if fetched.directory {
        shoal::content::local_tree::walk_async(dest, shoal::content::local_tree::TreeBounds::LOCAL)
            .await?
            .iter()
            .filter(|e| e.kind == shoal::proto::EntryKind::File)
            .count() as u64
    } else {
        1
    };
    Ok(shoal::content::transfer::DownloadSummary {
        files,
        bytes: fetched.bytes,
        directory: fetched.directory,
    })
}
