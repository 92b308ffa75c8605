#include "rpc/reflection_service.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace pdserve::rpc {
namespace {

using grpc::reflection::v1::ServerReflectionRequest;
using grpc::reflection::v1::ServerReflectionResponse;
namespace pb = google::protobuf;

// `file` and, depth first, every file it imports, each once.
void AddFileWithImports(const pb::FileDescriptor* file, absl::flat_hash_set<std::string>& seen,
                        grpc::reflection::v1::FileDescriptorResponse& out) {
  if (!seen.insert(file->name()).second) return;
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  out.add_file_descriptor_proto(proto.SerializeAsString());
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFileWithImports(file->dependency(i), seen, out);
  }
}

void SetNotFound(ServerReflectionResponse& response, const std::string& what) {
  response.mutable_error_response()->set_error_code(grpc::StatusCode::NOT_FOUND);
  response.mutable_error_response()->set_error_message(what);
}

// A ping-pong stream: read a request, write its answer, read the next; one operation at a time,
// so it needs no lock.
class ReflectionStream final
    : public grpc::ServerBidiReactor<ServerReflectionRequest, ServerReflectionResponse> {
 public:
  explicit ReflectionStream(const ReflectionService& service) : service_(service) {
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the client is done asking
    response_ = service_.Answer(request_);
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  const ReflectionService& service_;
  ServerReflectionRequest request_;
  ServerReflectionResponse response_;
};

}  // namespace

void ReflectionService::SetServiceNames(std::vector<std::string> names) {
  absl::MutexLock lock(&mu_);
  names_ = std::move(names);
}

grpc::ServerBidiReactor<ServerReflectionRequest, ServerReflectionResponse>*
ReflectionService::ServerReflectionInfo(grpc::CallbackServerContext*) {
  return new ReflectionStream(*this);
}

ServerReflectionResponse ReflectionService::Answer(const ServerReflectionRequest& request) const {
  const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
  ServerReflectionResponse response;
  response.set_valid_host(request.host());
  *response.mutable_original_request() = request;
  const pb::FileDescriptor* file = nullptr;
  switch (request.message_request_case()) {
    case ServerReflectionRequest::kListServices: {
      absl::MutexLock lock(&mu_);
      for (const std::string& name : names_) {
        response.mutable_list_services_response()->add_service()->set_name(name);
      }
      return response;
    }
    case ServerReflectionRequest::kFileByFilename:
      file = pool->FindFileByName(request.file_by_filename());
      if (file == nullptr) SetNotFound(response, "no file " + request.file_by_filename());
      break;
    case ServerReflectionRequest::kFileContainingSymbol:
      file = pool->FindFileContainingSymbol(request.file_containing_symbol());
      if (file == nullptr) SetNotFound(response, "no symbol " + request.file_containing_symbol());
      break;
    case ServerReflectionRequest::kFileContainingExtension: {
      const auto& ext = request.file_containing_extension();
      const pb::Descriptor* type = pool->FindMessageTypeByName(ext.containing_type());
      const pb::FieldDescriptor* field =
          type == nullptr ? nullptr : pool->FindExtensionByNumber(type, ext.extension_number());
      if (field == nullptr) {
        SetNotFound(response, absl::StrCat("no extension ", ext.extension_number(), " of ",
                                           ext.containing_type()));
      } else {
        file = field->file();
      }
      break;
    }
    case ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const pb::Descriptor* type =
          pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        SetNotFound(response, "no message type " + request.all_extension_numbers_of_type());
        break;
      }
      std::vector<const pb::FieldDescriptor*> extensions;
      pool->FindAllExtensions(type, &extensions);
      auto* numbers = response.mutable_all_extension_numbers_response();
      numbers->set_base_type_name(type->full_name());
      for (const pb::FieldDescriptor* e : extensions) numbers->add_extension_number(e->number());
      break;
    }
    case ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
      response.mutable_error_response()->set_error_code(grpc::StatusCode::INVALID_ARGUMENT);
      response.mutable_error_response()->set_error_message(
          "set one of file_by_filename, file_containing_symbol, file_containing_extension, "
          "all_extension_numbers_of_type, list_services");
      break;
  }
  if (file != nullptr) {
    absl::flat_hash_set<std::string> seen;
    AddFileWithImports(file, seen, *response.mutable_file_descriptor_response());
  }
  return response;
}

}  // namespace pdserve::rpc
